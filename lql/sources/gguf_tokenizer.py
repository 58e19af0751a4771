"""Rebuilding a Hugging Face ``tokenizer.json`` from a GGUF's tokenizer metadata.

Byte-level BPE (``tokenizer.ggml.model == "gpt2"``) is rebuilt with the
``tokenizers`` library the way ``transformers``' GGUF converter does it
(``transformers/integrations/gguf/gguf_tokenizer_mapping.py``): vocabulary
(tokens outside the byte alphabet re-spelled through it), merges, a ByteLevel
pre-tokenizer (or the split regex of a known ``tokenizer.ggml.pre``), a ByteLevel
decoder, control tokens as special added tokens, user-defined tokens as plain
added tokens, and a post-processor that adds BOS/EOS as
``tokenizer.ggml.add_bos_token``/``add_eos_token`` say.  SentencePiece
vocabularies (``"llama"``) are refused with a clear error.
"""

from __future__ import annotations

from functools import lru_cache

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from .base import SourceError

CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
#: ``tokenizer.ggml.pre`` values whose split regex differs from GPT-2's (as in transformers)
PRE_TOKENIZER_SPLITS = {
    "llama3": _LLAMA3_SPLIT, "llama-v3": _LLAMA3_SPLIT, "llama-bpe": _LLAMA3_SPLIT,
    "falcon3": _LLAMA3_SPLIT, "smaug-bpe": _LLAMA3_SPLIT, "dbrx": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT, "deepseek-r1-qwen": _QWEN2_SPLIT,
}


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character table (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _respell(token: str, alphabet: set, table: dict[int, str]) -> str:
    if set(token) <= alphabet:
        return token
    return "".join(table[b] for b in token.encode("utf-8"))


def _template(bos: str | None, eos: str | None, add_bos: bool, add_eos: bool):
    single = (f"{bos}:0 " if add_bos else "") + "$A:0" + (f" {eos}:0" if add_eos else "")
    pair = single + (f" {bos}:1" if add_bos else "") + " $B:1" + (f" {eos}:1" if add_eos else "")
    return single, pair


def build_tokenizer(meta: dict, where: str) -> tuple[str, dict]:
    """``(tokenizer.json text, tokenizer_config dict)`` from GGUF metadata
    (``meta`` maps GGUF keys to Python values)."""
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise SourceError(f"{where}: rebuilding a tokenizer from GGUF tokenizer model {kind!r} "
                          "is not supported (supported: 'gpt2', byte-level BPE); use the "
                          "model's Hugging Face folder instead", where)
    tokens = list(meta.get("tokenizer.ggml.tokens") or [])
    merges = list(meta.get("tokenizer.ggml.merges") or [])
    types = list(meta.get("tokenizer.ggml.token_type") or [])
    if not tokens or not merges:
        raise SourceError(f"{where}: the GGUF has no tokenizer vocabulary or merges", where)

    table = bytes_to_unicode()
    alphabet = set(table.values())
    vocab = {_respell(t, alphabet, table): i for i, t in enumerate(tokens)}
    pairs = []
    for m in merges:
        parts = m.split(" ")
        if len(parts) != 2:
            raise SourceError(f"{where}: malformed merge {m!r} in tokenizer.ggml.merges", where)
        pairs.append((parts[0], parts[1]))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, dropout=None, continuing_subword_prefix="",
                               end_of_word_suffix="", fuse_unk=False))
    split = PRE_TOKENIZER_SPLITS.get(meta.get("tokenizer.ggml.pre"))
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()

    control = [AddedToken(t, normalized=False, special=True)
               for t, ty in zip(tokens, types) if ty == CONTROL and set(t) <= alphabet]
    if control:
        tok.add_special_tokens(control)
    known = tok.get_vocab()
    user = [AddedToken(t, normalized=False, special=False)
            for t, ty in zip(tokens, types) if ty == USER_DEFINED and t in known]
    if user:
        tok.add_tokens(user)

    def token_of(key):
        i = meta.get(f"tokenizer.ggml.{key}")
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    config = {"tokenizer_class": "PreTrainedTokenizerFast",
              "bos_token": token_of("bos_token_id"), "eos_token": token_of("eos_token_id"),
              "unk_token": token_of("unknown_token_id"), "pad_token": token_of("padding_token_id")}
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    config["add_bos_token"] = add_bos
    config["add_eos_token"] = add_eos
    bos, eos = config["bos_token"], config["eos_token"]
    if (add_bos and bos is None) or (add_eos and eos is None):
        raise SourceError(f"{where}: the GGUF asks to add BOS/EOS but names no such token", where)
    single, pair = _template(bos, eos, add_bos, add_eos)
    specials = [(t, tok.token_to_id(t)) for t in {bos if add_bos else None, eos if add_eos else None}
                if t is not None]
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                       special_tokens=specials)
    template = meta.get("tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    return tok.to_str(), config
