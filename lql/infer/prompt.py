"""Prompt preparation: chat wrapping and token ids, exactly as transformers feeds them.

* Wrapped (chat) prompts: the model's template rendered by :mod:`lql.model.chat`
  (``apply_chat_template(messages, add_generation_prompt=True, tokenize=False)``),
  then encoded **without** adding special tokens — the template writes BOS
  itself, as ``apply_chat_template(..., tokenize=True)`` does.
* Raw prompts: ``tokenizer.encode(text)`` with the tokenizer's own post-processor
  (BOS where the model's tokenizer adds one) — what ``tokenizer(text)`` gives.

Whether to wrap: ``CHAT`` forces (error without a template), ``RAW`` forbids,
otherwise the session's ``SET CHAT`` mode: ``ON`` like CHAT, ``OFF`` like RAW,
``AUTO`` wraps when the model has a template.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import ast
from ..errors import ExecutionError

__all__ = ["Prepared", "prepare", "should_wrap"]


@dataclass(frozen=True)
class Prepared:
    text: str             # the exact text sent (after chat wrapping)
    ids: list[int]        # the token ids fed to the model
    chat_wrapped: bool
    prompt: str           # the user's prompt as given


def should_wrap(wrap: ast.PromptWrap | None, chat_mode: ast.ChatMode | None,
                has_template: bool) -> bool:
    """Decide wrapping; raise when wrapping is forced but there is no template."""
    if wrap is ast.PromptWrap.RAW:
        return False
    if wrap is ast.PromptWrap.CHAT:
        if not has_template:
            raise ExecutionError("CHAT: this model has no chat template (nothing in "
                                 "tokenizer_config.json, chat_template.jinja or the GGUF) — "
                                 "drop CHAT or use RAW")
        return True
    if chat_mode is ast.ChatMode.OFF:
        return False
    if chat_mode is ast.ChatMode.ON:
        if not has_template:
            raise ExecutionError("SET CHAT ON: this model has no chat template — "
                                 "SET CHAT AUTO (or OFF), or use RAW")
        return True
    return has_template


def prepare(target, prompt: str, *, wrap=None, system: str | None = None,
            chat_mode=None) -> Prepared:
    """Wrap (or not) and tokenise ``prompt`` for ``target`` (a :class:`~lql.infer.engine.Target`)."""
    if prompt is None or not str(prompt).strip():
        raise ExecutionError("the prompt is empty — give some text, e.g. INFER \"The capital of "
                             "France is\"")
    template = target.chat_template
    wrapped = should_wrap(wrap, chat_mode, bool(template))
    if system is not None and not wrapped:
        raise ExecutionError("SYSTEM text needs chat wrapping, but this prompt is not wrapped "
                             + ("(RAW)" if wrap is not None else
                                "(the model has no chat template)" if not template else
                                "(SET CHAT OFF)") + " — add CHAT or drop SYSTEM")
    tok = target.tokenizer
    if wrapped:
        from ..model.chat import render_chat, special_tokens, user_prompt
        text = render_chat(template, user_prompt(prompt, system),
                           special_tokens(target.tokenizer_config), add_generation_prompt=True)
        ids = list(tok.encode(text, add_special_tokens=False).ids)
    else:
        text = prompt
        ids = list(tok.encode(text).ids)
    return Prepared(text=text, ids=checked_ids(target, prompt, ids), chat_wrapped=wrapped,
                    prompt=prompt)


def checked_ids(target, prompt: str, ids: list[int]) -> list[int]:
    """``ids`` (the tokens of ``prompt``), refused when empty or longer than the model's positions."""
    if not ids:
        raise ExecutionError(f"the prompt {prompt[:60]!r} produced no tokens")
    limit = target.max_positions
    if limit is not None and len(ids) > limit:
        raise ExecutionError(f"the prompt {prompt[:60]!r} is {len(ids)} tokens, longer than this "
                             f"model's {limit} positions (max_position_embeddings) — shorten it")
    return ids
