"""Token helpers for browsing: tokenizing prompts and entities, decoding, noise.

Noise (what DESCRIBE drops as an edge target, SHOW ENTITIES ignores):

* special tokens (``<|im_end|>``, ``<s>`` ...: the tokenizer's added special tokens);
* whitespace-only and punctuation-only tokens (no letter or digit);
* sub-word fragments: a token whose text does not begin with a space is a
  fragment unless it is a word on its own — decided from the vocabulary: it
  is a word when the same text with a leading space encodes to one token
  (``"Paris"`` is a word because ``" Paris"`` is one token; ``"ington"`` is
  not);
* English stop words (:data:`STOP_WORDS`, compared lower-cased without the space).

The entity's own tokens are dropped by DESCRIBE itself (it knows the entity).
"""

from __future__ import annotations

import bisect
import re
from typing import TYPE_CHECKING

from ..errors import ExecutionError
from .memo import PerVindex

if TYPE_CHECKING:
    from ..runtime.view import VindexView

__all__ = ["STOP_WORDS", "prompt_ids", "entity_ids", "TokenCache", "tokens_of"]

#: English function words that never make a useful edge target.
STOP_WORDS = frozenset("""
a an the and or but nor so yet if then else than that this these those there here
of in on at by for with from to into onto upon over under about above below between
among through during before after since until while as per via out off up down
is are was were be been being am do does did done doing have has had having
will would shall should can could may might must ought
i me my mine myself you your yours yourself he him his himself she her hers herself
it its itself we us our ours ourselves they them their theirs themselves
who whom whose which what when where why how
not no yes all any both each few more most other some such only own same too very
just also again further once ever never always often
one two three first new many much every either neither
s t d ll m re ve
""".split())

_ALNUM = re.compile(r"[^\W_]", re.UNICODE)


def _tokenizer(view: VindexView):
    tok = getattr(view, "tokenizer", None)
    if tok is None:
        raise ExecutionError("this vindex has no tokenizer (tokenizer.json)")
    return tok


def prompt_ids(view: VindexView, prompt: str) -> list[int]:
    """Token ids of ``prompt`` as the model reads it (no special tokens added)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise ExecutionError("the prompt is empty: give some text, e.g. WALK \"The capital of France is\"")
    ids = _tokenizer(view).encode(prompt, add_special_tokens=False).ids
    if not ids:
        raise ExecutionError(f"the prompt {prompt!r} produced no tokens")
    return list(ids)


def entity_ids(view: VindexView, entity: str) -> list[int]:
    """Token ids of ``entity`` read as a word in running text (leading space added).

    Empty when the entity is blank or does not tokenize.
    """
    if not isinstance(entity, str) or not entity.strip():
        return []
    text = " " + entity.strip()
    return list(_tokenizer(view).encode(text, add_special_tokens=False).ids)


_WORD = re.compile(r"[^\W_][\w'-]*")


class TokenCache:
    """Decoded token text and noise decisions for one vindex (memoised)."""

    def __init__(self, view: VindexView):
        self._view = view
        self._text: dict[int, str] = {}
        self._noise: dict[int, bool] = {}
        tok = getattr(view, "tokenizer", None)
        special: set[int] = set()
        if tok is not None:
            try:
                special = {i for i, t in tok.get_added_tokens_decoder().items()
                           if getattr(t, "special", False)}
            except AttributeError:                    # older tokenizers
                special = set()
        self.special_ids = frozenset(special)
        self._words: list[str] | None = None
        self._keys: list[str] = []

    def text(self, token_id: int) -> str:
        t = self._text.get(token_id)
        if t is None:
            t = self._view.token_text(int(token_id))
            self._text[token_id] = t
        return t

    def texts(self, ids) -> list[str]:
        return [self.text(int(i)) for i in ids]

    def words_with_prefix(self, prefix: str, limit: int = 200) -> list[str]:
        """Whole-word vocabulary entries (leading-space tokens made of letters, digits,
        ``-`` or ``'``) starting with ``prefix``, case-insensitively, sorted — for the
        REPL's entity completion.  The word list is decoded once, on first use."""
        if self._words is None:
            tok = _tokenizer(self._view)
            size = tok.get_vocab_size()
            texts = tok.decode_batch([[i] for i in range(size)], skip_special_tokens=True)
            words = {t[1:] for i, t in enumerate(texts)
                     if i not in self.special_ids and t[:1] == " " and _WORD.fullmatch(t[1:])}
            self._words = sorted(words, key=lambda w: (w.lower(), w))
            self._keys = [w.lower() for w in self._words]
        low = prefix.lower()
        start = bisect.bisect_left(self._keys, low)
        out: list[str] = []
        for key, word in zip(self._keys[start:], self._words[start:]):
            if not key.startswith(low) or len(out) >= limit:
                break
            out.append(word)
        return out

    def is_word(self, text: str) -> bool:
        """A token text without a leading space that is a word on its own."""
        enc = _tokenizer(self._view).encode(" " + text, add_special_tokens=False).ids
        return len(enc) == 1

    def is_noise(self, token_id: int) -> bool:
        token_id = int(token_id)
        hit = self._noise.get(token_id)
        if hit is None:
            hit = self._judge(token_id)
            self._noise[token_id] = hit
        return hit

    def _judge(self, token_id: int) -> bool:
        if token_id in self.special_ids:
            return True
        text = self.text(token_id)
        core = text.strip()
        if not core or not _ALNUM.search(core):
            return True
        if core.lower() in STOP_WORDS:
            return True
        if not text[:1].isspace() and not self.is_word(core):
            return True
        return False


_token_caches = PerVindex(TokenCache)


def tokens_of(view: VindexView) -> TokenCache:
    """The (per-vindex, memoised) :class:`TokenCache` of ``view``."""
    return _token_caches(getattr(view, "base", None) or view)   # an overlay shares its base's
