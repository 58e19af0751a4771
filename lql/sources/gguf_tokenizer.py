"""Rebuilding a Hugging Face ``tokenizer.json`` from a GGUF's tokenizer metadata.

Byte-level BPE (``tokenizer.ggml.model == "gpt2"``) is rebuilt with the
``tokenizers`` library the way ``transformers``' GGUF converter does it
(``transformers/integrations/gguf/gguf_tokenizer_mapping.py``): vocabulary
(tokens outside the byte alphabet re-spelled through it), merges, a ByteLevel
pre-tokenizer (or the split regex of a known ``tokenizer.ggml.pre``), a ByteLevel
decoder, control tokens as special added tokens, user-defined tokens as plain
added tokens, and a post-processor that adds BOS/EOS as
``tokenizer.ggml.add_bos_token``/``add_eos_token`` say.

SentencePiece vocabularies (``"llama"``) are rebuilt as BPE with byte fallback,
merges recovered from the token scores, the way transformers' ``LlamaTokenizer``
does it (``Metaspace`` prefix on the first word), or for the Gemma
architectures its ``GemmaTokenizer`` (spaces → ``▁``, no prefix, merges in file
order, whitespace tokens re-spelled).  Other tokenizer models are refused.
"""

from __future__ import annotations

from functools import lru_cache

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

from .base import SourceError

CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types
#: GGUF architectures whose SentencePiece vocabulary follows Gemma's conventions
GEMMA_ARCHS = ("gemma", "gemma2", "gemma3")  # as transformers' GGUF_SENTENCEPIECE_BUILDERS

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


def generate_merges(vocab: dict[str, int], scores: dict[str, float]) -> list[tuple[str, str]]:
    """BPE merges implied by a scored vocabulary: every split of a token into two
    known pieces, best score first (transformers' ``generate_merges``)."""
    merges = []
    for merge, score in scores.items():
        local = [(merge[:i], merge[i:], score) for i in range(1, len(merge))
                 if merge[:i] in vocab and merge[i:] in vocab]
        local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda v: (v[2], len(v[0]), len(v[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


def _byte_level(meta: dict, tokens: list[str], where: str) -> tuple[Tokenizer, set]:
    merges = list(meta.get("tokenizer.ggml.merges") or [])
    if not merges:
        raise SourceError(f"{where}: the GGUF has no tokenizer merges", where)
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
    split = PRE_TOKENIZER_SPLITS.get(str(meta.get("tokenizer.ggml.pre")))
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok, alphabet


def _sentencepiece(meta: dict, tokens: list[str], unk: str | None, gemma: bool,
                   where: str) -> Tokenizer:
    if gemma:  # whitespace tokens are stored as real spaces; Gemma looks them up as ▁
        tokens = ["\u2581" * len(t) if " " in t and not t.strip() else t for t in tokens]
        scores: dict[str, float] = {t: float(-i) for i, t in enumerate(tokens)}  # Gemma merges follow file order
    else:
        values = meta.get("tokenizer.ggml.scores")
        if not values or len(values) != len(tokens):
            raise SourceError(f"{where}: a SentencePiece GGUF without one score per token", where)
        scores = dict(zip(tokens, (float(v) for v in values)))
    vocab = {t: i for i, t in enumerate(tokens)}
    if "tokenizer.ggml.merges" in meta and meta["tokenizer.ggml.merges"]:
        merges = [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]
    else:
        merges = generate_merges(vocab, scores)
    if gemma:
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=True, dropout=None,
                                   unk_token=unk or "<unk>", byte_fallback=True))
        tok.normalizer = normalizers.Replace(" ", "\u2581")
        tok.pre_tokenizer = pre_tokenizers.Split(pattern=" ", behavior="merged_with_previous",
                                                 invert=False)
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                         decoders.Fuse()])
    else:
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=True, byte_fallback=True,
                                   dropout=None))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first",
                                                     split=False)
        tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                         decoders.Fuse(), decoders.Strip(content=" ", left=1)])
    return tok


def _gemma4(meta: dict, tokens: list[str], unk: str | None, where: str) -> Tokenizer:
    """``tokenizer.ggml.model == "gemma4"``: BPE over ``▁``-for-space text with the file's
    merges and byte fallback, no pre-tokenizer — the tokenizer.json Gemma 4 checkpoints
    ship (transformers' GemmaTokenizer); it adds no BOS itself (the chat template does)."""
    merges = []
    for m in meta.get("tokenizer.ggml.merges") or ():
        parts = m.split(" ")
        if len(parts) != 2:
            raise SourceError(f"{where}: malformed merge {m!r} in tokenizer.ggml.merges", where)
        merges.append((parts[0], parts[1]))
    if not merges:
        raise SourceError(f"{where}: a gemma4 GGUF tokenizer without tokenizer.ggml.merges", where)
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=True, dropout=None,
                               unk_token=unk or "<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    return tok


def build_tokenizer(meta: dict, where: str) -> tuple[str, dict]:
    """``(tokenizer.json text, tokenizer_config dict)`` from GGUF metadata
    (``meta`` maps GGUF keys to Python values)."""
    kind = meta.get("tokenizer.ggml.model")
    tokens = list(meta.get("tokenizer.ggml.tokens") or [])
    types = list(meta.get("tokenizer.ggml.token_type") or [])
    if kind in ("gpt2", "llama", "gemma4") and not tokens:
        raise SourceError(f"{where}: the GGUF has no tokenizer vocabulary", where)

    def token_of(key):
        i = meta.get(f"tokenizer.ggml.{key}")
        return tokens[i] if i is not None and 0 <= i < len(tokens) else None

    config = {"tokenizer_class": "PreTrainedTokenizerFast",
              "bos_token": token_of("bos_token_id"), "eos_token": token_of("eos_token_id"),
              "unk_token": token_of("unknown_token_id"), "pad_token": token_of("padding_token_id")}
    if kind == "gpt2":
        tok, alphabet = _byte_level(meta, tokens, where)
        named = []
        add_bos_default = False
    elif kind == "llama":
        gemma = meta.get("general.architecture") in GEMMA_ARCHS
        tok = _sentencepiece(meta, tokens, config["unk_token"], gemma, where)
        alphabet = None
        # the special tokens the config names are special even when not typed CONTROL
        named = [config[k] for k in ("unk_token", "bos_token", "eos_token", "pad_token")
                 if config[k] is not None]
        add_bos_default = True  # llama.cpp adds BOS to a SentencePiece vocab unless told not to
    elif kind == "gemma4":
        tok = _gemma4(meta, tokens, config["unk_token"], where)
        alphabet = None
        named = [config[k] for k in ("unk_token", "bos_token", "eos_token", "pad_token")
                 if config[k] is not None]
        add_bos_default = True
    else:
        raise SourceError(f"{where}: rebuilding a tokenizer from GGUF tokenizer model {kind!r} "
                          "is not supported (supported: 'gpt2' byte-level BPE, 'llama' "
                          "SentencePiece, 'gemma4' BPE); use the model's Hugging Face folder instead", where)

    control = [t for t, ty in zip(tokens, types)
               if ty == CONTROL and (alphabet is None or set(t) <= alphabet)]
    specials = list(dict.fromkeys(named + control))
    if specials:
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    known = tok.get_vocab()
    user = [AddedToken(t, normalized=False, special=False)
            for t, ty in zip(tokens, types) if ty == USER_DEFINED and t in known]
    if user:
        tok.add_tokens(user)

    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", add_bos_default))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    config["add_bos_token"] = add_bos
    config["add_eos_token"] = add_eos
    bos, eos = config["bos_token"], config["eos_token"]
    if (add_bos and bos is None) or (add_eos and eos is None):
        raise SourceError(f"{where}: the GGUF asks to add BOS/EOS but names no such token", where)
    if kind != "gemma4":  # transformers' Gemma 4 tokenizer adds neither (whatever the flags say)
        single, pair = _template(bos, eos, add_bos, add_eos)
        ids = [(t, tok.token_to_id(t)) for t in dict.fromkeys([bos if add_bos else None,
                                                             eos if add_eos else None]) if t]
        tok.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                           special_tokens=ids)
    template = meta.get("tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    return tok.to_str(), config
