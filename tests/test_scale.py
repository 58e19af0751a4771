"""Bounded memory (issue 11): layers built when they run under a byte budget give the same
numbers as fully cached ones; bf16 storage round-trips a bf16 checkpoint exactly; COMPILE
INTO MODEL writes shards that transformers loads with the same predictions."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import gemma4_fixtures, tiny_model_dir
from vindex_fixtures import tiny_vindex

from lql.model import build_model, layerstore
from lql.runtime.forward import greedy
from lql.vindex import extract, open_vindex

PROMPT = [1, 17, 230, 451, 99, 12, 7]


def _run(v, budget_mb: str, monkeypatch) -> tuple[np.ndarray, list[int], list[int], dict]:
    """Logits of PROMPT, 8 greedy tokens (KV cache) and the layers left cached, at a budget."""
    monkeypatch.setenv("LQL_WEIGHT_CACHE_MB", budget_mb)
    layerstore.clear_weight_cache()
    from lql.model import Record
    m = build_model(v.model_config, v.weights)
    out = m.forward(PROMPT, record=Record(residuals="all", deltas="last", ffn_activations=True))
    tokens = list(greedy(m, PROMPT[:3], 8, stop_ids=()))
    extra = {"residuals": np.stack(out.residuals), "acts": [a for a in out.ffn_activations]}
    return out.logits, tokens, m.blocks.cached_layers(), extra


@pytest.mark.parametrize("family,dtype", [("llama", "f32"), ("llama", "f16"), ("gemma2", "f16"),
                                          ("gpt2", "f16"), ("qwen3", "f32")])
def test_budget_zero_equals_unlimited(family, dtype, monkeypatch):
    v = open_vindex(tiny_vindex(family, "inference", dtype))
    full = _run(v, "-1", monkeypatch)
    none = _run(v, "0", monkeypatch)
    assert full[2] == list(range(v.num_layers))      # unlimited: every layer kept
    assert none[2] == []                              # budget 0: none kept, all streamed
    np.testing.assert_array_equal(none[0], full[0])   # bit for bit
    np.testing.assert_array_equal(none[3]["residuals"], full[3]["residuals"])
    assert none[1] == full[1]
    layerstore.clear_weight_cache()


def test_budget_keeps_the_first_layers_that_fit(monkeypatch):
    v = open_vindex(tiny_vindex("llama", "inference", "f32"))
    monkeypatch.setenv("LQL_WEIGHT_CACHE_MB", "-1")
    layerstore.clear_weight_cache()
    one = layerstore.owned_bytes(build_model(v.model_config, v.weights).blocks[0])
    assert one > 0
    layerstore.clear_weight_cache()
    monkeypatch.setenv("LQL_WEIGHT_CACHE_MB", str(1.5 * one / 2**20))
    m = build_model(v.model_config, v.weights)
    assert m.blocks.cached_layers() == [0]
    for _ in range(3):                                 # streaming passes do not churn it
        m.forward(PROMPT)
        assert m.blocks.cached_layers() == [0]
    assert layerstore.cached_bytes() <= 1.5 * one
    layerstore.clear_weight_cache()


def test_bad_budget_is_a_clear_error(monkeypatch):
    from lql.errors import LqlError
    monkeypatch.setenv("LQL_WEIGHT_CACHE_MB", "lots")
    with pytest.raises(LqlError, match="LQL_WEIGHT_CACHE_MB"):
        layerstore.budget_bytes()


GEMMA4 = gemma4_fixtures() / "tiny-gemma4"


@pytest.mark.skipif(not GEMMA4.is_dir(), reason="shared Gemma 4 fixture not present")
def test_budget_zero_equals_unlimited_gemma4(tmp_path, monkeypatch):
    v = open_vindex(extract(GEMMA4, tmp_path / "g4", level="inference", dtype="f32", progress=False))
    full = _run(v, "-1", monkeypatch)
    none = _run(v, "0", monkeypatch)
    assert none[2] == []
    np.testing.assert_array_equal(none[0], full[0])
    assert none[1] == full[1]
    layerstore.clear_weight_cache()


def test_statements_use_the_bounded_path(tmp_path, monkeypatch):
    """INFER, GENERATE, TRACE and an INSERT at budget 0 give what they give fully cached."""
    from lql.runtime.models import clear_cache
    from lql.session import Session
    path = tiny_vindex("llama", "all", "f32")

    def session_results(budget: str) -> list:
        monkeypatch.setenv("LQL_WEIGHT_CACHE_MB", budget)
        layerstore.clear_weight_cache()
        clear_cache()
        s = Session()
        s.execute(f'USE "{path}"; SET CHAT OFF')
        got = [s.query('INFER "The capital of France is" TOP 5').rows,
               s.query('INFER "The capital of France is" GENERATE 6').rows,
               s.query('TRACE "The capital of France is"').rows]
        s.execute('INSERT INTO EDGES (entity, relation, target) VALUES ("Atlantis", "capital", "Paris") '
                  'AT LAYER 1 MODE COMPOSE')
        got.append(s.query('INFER "The capital of Atlantis is" TOP 5').rows)
        return got

    full = session_results("-1")
    none = session_results("0")
    assert repr(none) == repr(full)
    layerstore.clear_weight_cache()
    clear_cache()


# --------------------------------------------------------------------------- bf16

def _bf16_source(tmp_path: Path, family: str = "llama") -> Path:
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file
    out = tmp_path / f"{family}-bf16"
    shutil.copytree(tiny_model_dir(family), out)
    sd = load_file(str(out / "model.safetensors"))
    save_file({k: t.to(torch.bfloat16) for k, t in sd.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    cfg = json.loads((out / "config.json").read_text())
    cfg["torch_dtype"] = cfg["dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(cfg))
    return out


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_bf16_extraction_round_trips_exactly(tmp_path, family):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file
    src = _bf16_source(tmp_path, family)
    vb = open_vindex(extract(src, tmp_path / "b", level="all", dtype="bf16", progress=False))
    vf = open_vindex(extract(src, tmp_path / "f", level="all", dtype="f32", progress=False))
    index = json.loads((tmp_path / "b" / "index.json").read_text())
    assert index["dtype"] == "bf16" and vb.dtype == "bf16"
    sizes = {p.name: p.stat().st_size for p in (tmp_path / "b").iterdir()}
    assert sizes["embeddings.bin"] == vb.vocab_size * vb.hidden_size * 2    # 16-bit words
    checked = 0
    for name, t in load_file(str(src / "model.safetensors")).items():
        key = name.removeprefix("model.").removeprefix("transformer.")
        if key not in vb.weights:
            continue
        words = t.contiguous().view(torch.int16).numpy().view(np.uint16)
        raw = np.asarray(vb.weights.raw(key))
        assert raw.dtype == np.uint16
        np.testing.assert_array_equal(raw, words.reshape(raw.shape) if raw.shape != words.shape
                                      else words, err_msg=key)
        np.testing.assert_array_equal(vb.weights[key], vf.weights[key], err_msg=key)
        checked += 1
    assert checked >= 10
    np.testing.assert_array_equal(vb.gate(0), vf.gate(0))
    np.testing.assert_array_equal(vb.embed([5, 6]), vf.embed([5, 6]))
    # the forward pass of the bf16 vindex is the f32 one's, bit for bit
    a = build_model(vb.model_config, vb.weights).forward(PROMPT).logits
    b = build_model(vf.model_config, vf.weights).forward(PROMPT).logits
    np.testing.assert_array_equal(a, b)


def test_bf16_words_round_trip():
    from lql.vindex.weights import bf16_to_f32, f32_to_bf16
    words = np.arange(0, 1 << 16, dtype=np.uint32).astype(np.uint16)
    values = bf16_to_f32(words)
    back = f32_to_bf16(values)
    finite = np.isfinite(values)
    np.testing.assert_array_equal(back[finite], words[finite])
    assert np.isnan(bf16_to_f32(back[~np.isfinite(values) & np.isnan(values)])).all()
    # round to nearest even, as torch does
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(0).standard_normal(10000).astype(np.float32) * 100
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(f32_to_bf16(x), want)


def test_bf16_is_refused_by_an_f16_f32_reader_with_a_clear_message():
    from lql.errors import VindexError
    from lql.vindex import format as fmt
    saved = dict(fmt.DTYPES)
    try:
        del fmt.DTYPES["bf16"]                    # a reader that knows f16 and f32 only
        with pytest.raises(VindexError, match="unsupported dtype 'bf16'"):
            fmt.np_dtype("bf16")
    finally:
        fmt.DTYPES.clear()
        fmt.DTYPES.update(saved)


# --------------------------------------------------------------------------- sharded COMPILE

@pytest.mark.parametrize("family,dtype", [("llama", "f32"), ("qwen2", "f16")])
def test_sharded_compile_loads_in_transformers(tmp_path, family, dtype):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from safetensors.numpy import load_file

    from lql.edit.compile import compile_model
    v = open_vindex(tiny_vindex(family, "all", dtype))
    one = compile_model(v, tmp_path / "one")
    assert one["shards"] == 1 and (tmp_path / "one" / "model.safetensors").is_file()
    many = compile_model(v, tmp_path / "many", shard_bytes=200_000)
    assert many["shards"] >= 3
    index = json.loads((tmp_path / "many" / "model.safetensors.index.json").read_text())
    files = sorted({f for f in index["weight_map"].values()})
    assert len(files) == many["shards"] and not (tmp_path / "many" / "model.safetensors").exists()
    whole = load_file(tmp_path / "one" / "model.safetensors")
    parts: dict[str, np.ndarray] = {}
    for f in files:
        parts.update(load_file(tmp_path / "many" / f))
    assert parts.keys() == whole.keys()
    for k in whole:
        np.testing.assert_array_equal(parts[k], whole[k])
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in whole.values())

    hf = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "many", dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        ref = hf(torch.tensor([PROMPT])).logits[0, -1].numpy()
    ours = build_model(v.model_config, v.weights).forward(PROMPT).logits
    assert int(np.argmax(ref)) == int(np.argmax(ours))
    np.testing.assert_array_equal(np.argsort(-ref)[:5], np.argsort(-ours)[:5])
    np.testing.assert_allclose(ref, ours, rtol=1e-3, atol=1e-3)


# --------------------------------------------------------------------------- stored words

@pytest.mark.parametrize("storage", ["f32", "f16", "bf16"])
def test_stored_matrix_product_is_the_cached_product_bit_for_bit(storage):
    """Blocks cast from the stored words (crossing the stacked parts' boundaries) give what
    the float32 matrix gives, for one row (block by block) and for more (cast whole)."""
    from lql.model.ffn import matmul
    from lql.model.stored import StoredMatrix
    rng = np.random.default_rng(3)
    for splits, cols in [((64, 32, 32), 64), ((3, 5, 120), 64), ((700, 300), 2000), ((37,), 33),
                         ((1500, 2604), 1024)]:
        parts = []
        for rows in splits:
            a = rng.standard_normal((rows, cols), dtype=np.float32)
            parts.append({"f32": a, "f16": a.astype(np.float16),
                          "bf16": (a.view(np.uint32) >> 16).astype(np.uint16)}[storage])
        full = np.concatenate([(p.astype(np.uint32) << 16).view(np.float32) if storage == "bf16"
                               else p.astype(np.float32) for p in parts])
        stored = StoredMatrix(parts)
        assert stored.shape == full.T.shape
        np.testing.assert_array_equal(np.asarray(stored), full.T)
        for t in (1, 2, 3, 5, 16, 17):
            x = rng.standard_normal((t, cols), dtype=np.float32)
            np.testing.assert_array_equal(matmul(x, stored), matmul(x, full.T), err_msg=f"{splits} {t}")


def _resident_kb(path: Path) -> int:
    """This process's resident kB of its mappings of ``path`` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):
            inside = line.rstrip().endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs /proc/self/smaps")
def test_stored_product_maps_its_pages_and_releases_them(tmp_path):
    """A decode product over memory-mapped words reads them in two threads, each mapping
    its half's pages first and (with a release) dropping them after: the product is the
    cached one and leaves nothing of the file resident; without a release they stay."""
    from lql.model.stored import StoredMatrix, _spans
    rng = np.random.default_rng(5)
    rows, cols = 4096, 1024
    words = (rng.standard_normal((rows, cols), dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    path = tmp_path / "w.bin"
    words.tofile(path)
    mapped = np.memmap(path, dtype=np.uint16, mode="r", shape=(rows, cols))
    parts = [mapped[:1000], mapped[1000:]]
    spans = _spans(parts)
    assert len(spans) == 1 and spans[0][1] == 0 and spans[0][2] == words.nbytes    # merged, whole file
    assert _spans([words]) == []                                                  # in memory: none
    full = (words.astype(np.uint32) << 16).view(np.float32)
    x = rng.standard_normal((1, cols), dtype=np.float32)
    released = StoredMatrix(parts, ["a", "b"], release=lambda key: None)
    np.testing.assert_array_equal(released.product(x), x @ full.T)
    assert len(released._plan(False)) == 2                                            # two threads' halves
    assert _resident_kb(path) == 0
    kept = StoredMatrix(parts)
    np.testing.assert_array_equal(kept.product(x), x @ full.T)
    assert _resident_kb(path) >= words.nbytes // 1024 - 8
    del mapped, parts, released, kept


def test_bf16_layers_run_from_their_stored_words_at_budget_zero(tmp_path, monkeypatch):
    """At budget 0 a decode step and a short prompt (up to 16 rows) multiply the bf16 words
    where they are stored (no float32 layer is built), a longer prompt casts the layer; all
    equal the cached model."""
    from lql.model.stored import STREAM_MAX_ROWS, StoredMatrix
    v = open_vindex(extract(_bf16_source(tmp_path), tmp_path / "b", level="inference", dtype="bf16",
                            progress=False))
    long_prompt = PROMPT * 3
    results = {}
    for budget in ("-1", "0"):
        monkeypatch.setenv("LQL_WEIGHT_CACHE_MB", budget)
        layerstore.clear_weight_cache()
        m = build_model(v.model_config, v.weights)
        few, many = m.blocks.for_rows(0, len(PROMPT), False), m.blocks.for_rows(0, STREAM_MAX_ROWS + 1, False)
        results[budget] = (m.forward(PROMPT).logits, m.forward(long_prompt).logits, m.forward([5]).logits,
                           list(greedy(m, PROMPT[:3], 8, stop_ids=())))
        if budget == "0":
            assert isinstance(few.ffn.gate_up, StoredMatrix) and isinstance(few.attention.o, StoredMatrix)
            assert isinstance(many.ffn.gate_up, np.ndarray)
            assert m.blocks.cached_layers() == []
        else:
            assert few is many and isinstance(few.ffn.gate_up, np.ndarray)
    for a, b in zip(results["0"], results["-1"]):
        np.testing.assert_array_equal(a, b)
    layerstore.clear_weight_cache()
