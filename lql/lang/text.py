"""LQL text without parsing it: statements, completeness, highlighting.

Everything here cuts text with :func:`lql.lang.tokens.scan`, the same token
patterns the parser lexes with, so strings and comments end in the same places
for the splitter, the REPL and the parser. In particular the rule for strings
across lines is the parser's: a string never holds a raw line break, so a quote
still open at a line break is an error that no later line can repair.
"""

from __future__ import annotations

from .tokens import BLANKS, OPEN_BLOCK, OPEN_STRING, OTHER, scan

BOM = "\ufeff"

_QUIET = frozenset({BLANKS, "COMMENT", "BLOCK", OPEN_BLOCK})  # pieces that are not code


def strip_bom(text: str) -> str:
    """``text`` without a leading UTF-8 byte-order mark (scripts saved by some editors)."""
    return text[1:] if text.startswith(BOM) else text


def _is_semi(text: str, kind: str, start: int, end: int) -> bool:
    return kind == "PUNCT" and end - start == 1 and text[start] == ";"


def _has_code(text: str, start: int = 0, end: int | None = None) -> bool:
    """True when ``text[start:end]`` holds something besides blanks, comments and ``;``."""
    chunk = strip_bom(text[start:end])
    return any(kind not in _QUIET and not _is_semi(chunk, kind, a, b)
               for kind, a, b in scan(chunk))


def split_statements(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` offsets of each ``;``-terminated chunk (``;`` included).

    Chunks holding only whitespace and comments are dropped.
    """
    chunks: list[tuple[int, int]] = []
    start = 0
    for kind, a, b in scan(text):
        if _is_semi(text, kind, a, b):
            chunks.append((start, b))
            start = b
    chunks.append((start, len(text)))
    return [(a, b) for a, b in chunks if _has_code(text, a, b)]


def is_complete(text: str) -> bool:
    """Whether the REPL should hand ``text`` to the parser now (Enter submits).

    True when the text holds no code, when its last code is a ``;`` (trailing
    blanks and comments allowed), or when it has a string left open at a line
    break (an error the parser reports; more lines cannot repair it). False while
    a statement waits for its ``;``, a string is open at the very end, or a
    ``/*`` comment is not closed. The REPL and the parser agree on this
    (tests/test_lang_agreement.py states the rule).
    """
    text = strip_bom(text)
    last_is_semi = True
    for kind, a, b in scan(text):
        if kind == OPEN_STRING:
            if b < len(text):            # a line break ends it: a broken string
                return True
            return False
        if kind == OPEN_BLOCK:
            return False
        if kind in _QUIET:
            continue
        last_is_semi = _is_semi(text, kind, a, b)
    return last_is_semi


def statement_tail(text: str) -> str:
    """The text of the statement being typed (after the last ``;`` outside strings/comments)."""
    start = 0
    for kind, a, b in scan(text):
        if _is_semi(text, kind, a, b):
            start = b
    return text[start:]


def _last_piece(text: str) -> tuple[str, int, int] | None:
    last = None
    for piece in scan(text):
        last = piece
    return last


def open_string_at_end(text: str) -> tuple[int, str] | None:
    """If ``text`` ends inside an unterminated string: (offset of its quote, the quote)."""
    last = _last_piece(text)
    if last is None or last[0] != OPEN_STRING or last[2] != len(text):
        return None
    return last[1], text[last[1]]


def ends_in_comment(text: str) -> bool:
    """True when the end of ``text`` is inside a ``--`` or an open ``/*`` comment."""
    last = _last_piece(text)
    if last is None or last[2] != len(text):
        return False
    return last[0] == "COMMENT" or last[0] == OPEN_BLOCK


def last_word(text: str) -> str:
    """The last token of ``text`` (upper case) that is not a blank or a comment."""
    word = ""
    for kind, a, b in scan(text):
        if kind not in _QUIET and kind != OTHER:
            word = text[a:b]
    return word.upper()


#: Highlighting classes of :func:`highlight`.
KEYWORD, FIELD, STRING, NUMBER, COMMENT, OPERATOR, PLAIN = (
    "keyword", "field", "string", "number", "comment", "operator", "")

_CLASS = {"STRING": STRING, OPEN_STRING: STRING, "NUMBER": NUMBER, "RANGE": NUMBER,
          "COMMENT": COMMENT, "BLOCK": COMMENT, OPEN_BLOCK: COMMENT, "PUNCT": OPERATOR}


def highlight(text: str, keywords: frozenset[str] | set[str],
              fields: tuple[str, ...] | frozenset[str]) -> list[tuple[str, str]]:
    """``(class, piece)`` for all of ``text`` (classes: the constants above)."""
    out: list[tuple[str, str]] = []
    for kind, a, b in scan(text):
        piece = text[a:b]
        if kind == "WORD":
            cls = KEYWORD if piece.upper() in keywords else FIELD if piece.lower() in fields \
                else PLAIN
        else:
            cls = _CLASS.get(kind, PLAIN)
        out.append((cls, piece))
    return out
