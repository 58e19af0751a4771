"""Chat templates rendered exactly as transformers' ``apply_chat_template`` renders them.

The Jinja environment mirrors ``transformers.utils.chat_template_utils``:
``ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)`` with the
``loopcontrols`` extension and a ``{% generation %}`` block (rendered as its body),
the ``tojson`` filter redefined as plain ``json.dumps`` (no HTML escaping, ``indent``,
``separators``, ``sort_keys``), globals ``raise_exception``, ``strftime_now``,
``dict`` and a ``namespace`` that refuses underscore names.  Template variables are
``messages``, ``tools``, ``documents``, ``add_generation_prompt`` and the named special
tokens (``bos_token``, ``eos_token``, ``unk_token``, ``sep_token``, ``pad_token``,
``cls_token``, ``mask_token``) from ``tokenizer_config.json``.

Token ids: transformers encodes the rendered text with ``add_special_tokens=False``
(the template writes BOS itself when the model wants one), so :func:`chat_token_ids`
does the same — BOS is never doubled.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NoReturn

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.parser
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from lql.errors import LqlError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                       "mask_token")
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
#: a rendered prompt longer than this is refused (a template looping to fill memory)
MAX_RENDERED_CHARS = 1 << 24


class ChatTemplateError(LqlError):
    """The chat template failed to compile or raised while rendering."""


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}…{% endgeneration %}`` renders its body (transformers tracks indices in it)."""
    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Callable[[], str]) -> str:
        return caller()


def _raise_exception(message: str) -> NoReturn:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | str | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


class _TemplateDict:
    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    def __init__(*args: Any, **kwargs: Any) -> None:
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"Chat templates cannot store underscore-prefixed attributes on a namespace, but got {name!r}.")


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationBlock, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as err:
        raise ChatTemplateError(f"chat template does not compile: {err.message} (line {err.lineno})") from err
    except (RecursionError, MemoryError, ValueError, TypeError) as err:
        raise ChatTemplateError(f"chat template does not compile: {type(err).__name__}") from None


def special_tokens(tokenizer_config: dict[str, Any] | None) -> dict[str, str]:
    """The named special tokens a template sees, from ``tokenizer_config.json`` (or
    ``special_tokens_map.json``): strings, or ``{"content": ...}`` added-token dicts."""
    out: dict[str, str] = {}
    for name in SPECIAL_TOKEN_NAMES:
        value = (tokenizer_config or {}).get(name)
        if isinstance(value, dict):
            value = value.get("content")
        if value is not None:
            out[name] = str(value)
    return out


def _plain(value: Any) -> Any:
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, str):  # subclasses (enums ...) lose their extra methods, as in transformers
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _plain(value.item())
    return f"<{type(value).__name__}>"


def _normalise_messages(messages: Iterable[Any]) -> list[dict[str, Any]]:
    out = []
    for message in messages:
        if not isinstance(message, dict):
            raise ChatTemplateError(f"chat messages must be dicts, got {message!r}")
        message = {k: _plain(v) for k, v in message.items() if v is not None}
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def render_chat(template: str, messages: list[dict[str, Any]],
                special_tokens: dict[str, str] | None = None, *,
                add_generation_prompt: bool = True, tools: list[Any] | None = None,
                documents: list[Any] | None = None, **kwargs: Any) -> str:
    """The prompt string ``tokenizer.apply_chat_template(messages, tokenize=False,
    add_generation_prompt=...)`` would produce."""
    if not template:
        raise ChatTemplateError("the model has no chat template")
    compiled = _compile(template)
    variables = {**(special_tokens or {}), **kwargs}
    try:
        out = compiled.render(messages=_normalise_messages(messages), tools=_plain(tools),
                               documents=_plain(documents), add_generation_prompt=add_generation_prompt,
                               **_plain(variables))
    except jinja2.TemplateError as err:
        raise ChatTemplateError(f"chat template error: {err}") from err
    except (OverflowError, MemoryError, RecursionError, TypeError, ValueError, KeyError,
            AttributeError, IndexError, ZeroDivisionError) as err:
        # the sandbox refuses range() over MAX_RANGE items with OverflowError; anything else
        # a template's own code raises is the template's fault, not an internal error
        raise ChatTemplateError(f"chat template error: {type(err).__name__}: "
                                f"{str(err)[:200]}") from None
    if len(out) > MAX_RENDERED_CHARS:
        raise ChatTemplateError(f"chat template rendered {len(out)} characters (more than "
                                f"{MAX_RENDERED_CHARS}); refusing it")
    return out


def chat_token_ids(tokenizer: Tokenizer, template: str, messages: list[dict[str, Any]],
                   special_tokens: dict[str, str] | None = None, **kwargs: Any) -> list[int]:
    """Token ids as ``apply_chat_template(..., tokenize=True)`` gives them: the rendered
    text encoded without adding special tokens (``tokenizer`` is a ``tokenizers.Tokenizer``)."""
    text = render_chat(template, messages, special_tokens, **kwargs)
    return list(tokenizer.encode(text, add_special_tokens=False).ids)


def user_prompt(prompt: str, system: str | None = None) -> list[dict[str, Any]]:
    """The message list for one user turn (optionally after a system message)."""
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": prompt}]
