"""Chat templates: byte-identical to transformers' apply_chat_template, ids included."""

from __future__ import annotations

import functools
import json
from datetime import datetime

import pytest
from model_fixtures import smollm2_hf_dir

from lql.model.chat import (
    ChatTemplateError,
    chat_token_ids,
    render_chat,
    special_tokens,
    user_prompt,
)

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.parity


@functools.lru_cache(maxsize=1)
def hf_tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(smollm2_hf_dir())


def smol_template() -> str:
    return (smollm2_hf_dir() / "chat_template.jinja").read_text()


def smol_special() -> dict:
    return special_tokens(json.loads((smollm2_hf_dir() / "tokenizer_config.json").read_text()))


CONVERSATIONS = [
    user_prompt("What is the capital of France?"),
    user_prompt("What is the capital of France?", system="You are terse."),
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke about {{ braces }} and <b>tags</b> & \"quotes\"."}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_template_matches_transformers(messages, add_generation_prompt):
    tok = hf_tokenizer()
    want = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    got = render_chat(smol_template(), messages, smol_special(), add_generation_prompt=add_generation_prompt)
    assert got == want
    want_ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt)
    if isinstance(want_ids, dict) or hasattr(want_ids, "input_ids"):
        want_ids = want_ids["input_ids"]
    from tokenizers import Tokenizer
    fast = Tokenizer.from_file(str(smollm2_hf_dir() / "tokenizer.json"))
    assert chat_token_ids(fast, smol_template(), messages, smol_special(),
                          add_generation_prompt=add_generation_prompt) == list(want_ids)


def test_smollm2_system_prompt_is_default_only_without_system_message():
    plain = render_chat(smol_template(), CONVERSATIONS[0], smol_special())
    with_system = render_chat(smol_template(), CONVERSATIONS[1], smol_special())
    assert "You are a helpful AI assistant named SmolLM" in plain
    assert "You are a helpful AI assistant named SmolLM" not in with_system
    assert with_system.startswith("<|im_start|>system\nYou are terse.<|im_end|>\n")
    assert with_system.endswith("<|im_start|>assistant\n")


# templates exercising the environment's extras: loop controls, raise_exception, strftime_now,
# tojson (no HTML escaping), namespace, trim/lstrip blocks, bos_token, {% generation %}
TRICKY = {
    "loopcontrols": (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}{% continue %}{% endif %}"
        "{% if loop.index > 3 %}{% break %}{% endif %}\n"
        "  {% if true %}\n[{{ m['role'] }}] {{ m['content'] }}\n  {% endif %}\n"
        "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"),
    "tojson_namespace": (
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}"
        "{{ m | tojson }}|{{ m | tojson(indent=2, sort_keys=true) }}\n{% endfor %}"
        "count={{ ns.n }} eos={{ eos_token }}{% generation %}GEN{% endgeneration %}"),
    "date": "{{ strftime_now('%Y-%m-%d') }}:{{ messages[0]['content'] }}",
}
MESSAGES = [{"role": "system", "content": "sys"}, {"role": "user", "content": "a <b> & \"c\" é"},
            {"role": "assistant", "content": "ok"}, {"role": "user", "content": "x"},
            {"role": "user", "content": "y"}, {"role": "user", "content": "z"}]


@pytest.mark.parametrize("name", sorted(TRICKY))
def test_tricky_templates_match_transformers(name):
    tok = hf_tokenizer()
    template = TRICKY[name]
    want = tok.apply_chat_template(MESSAGES, chat_template=template, tokenize=False,
                                   add_generation_prompt=True)
    got = render_chat(template, MESSAGES, smol_special(), add_generation_prompt=True)
    assert got == want
    if name == "date":
        assert got.startswith(datetime.now().strftime("%Y-%m-%d"))
    if name == "tojson_namespace":
        assert '"a <b> & \\"c\\" é"' in got  # neither HTML-escaped nor ASCII-escaped


def test_raise_exception_is_a_clear_error_like_transformers():
    template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be user') }}{% endif %}ok"
    with pytest.raises(Exception, match="first message must be user"):
        hf_tokenizer().apply_chat_template(MESSAGES, chat_template=template, tokenize=False)
    with pytest.raises(ChatTemplateError, match="first message must be user"):
        render_chat(template, MESSAGES)
    assert render_chat(template, MESSAGES[1:]) == "ok"


@pytest.mark.parametrize("template, why", [
    ("{{ messages.__class__.__mro__ }}", "unsafe"),           # sandbox
    ("{{ messages.append(1) }}", "unsafe"),                   # immutable sandbox
    ("{% set ns = namespace(_x=1) %}", "underscore-prefixed"),  # transformers' namespace rule
])
def test_sandbox_refuses_unsafe_access(template, why):
    with pytest.raises(ChatTemplateError, match=why):
        render_chat(template, MESSAGES)


def test_bad_template_is_chat_template_error():
    with pytest.raises(ChatTemplateError, match="does not compile"):
        render_chat("{% for m in messages %}", MESSAGES)
    with pytest.raises(ChatTemplateError, match="no chat template"):
        render_chat("", MESSAGES)
