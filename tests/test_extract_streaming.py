"""Large global tensors (Gemma 4's per-layer embedding table: 262144 x 8960 at E2B) are
extracted in row blocks, never as one float32 copy; the result is the same bytes."""

from __future__ import annotations

import numpy as np
import pytest
from model_fixtures import gemma4_fixtures
from safetensors.numpy import save_file

from lql.sources.safetensors_io import bf16_to_f32
from lql.vindex import extract, open_vindex
from lql.vindex import extractor as extractor_mod

FIXTURE = gemma4_fixtures() / "tiny-gemma4"
PLE = "embed_tokens_per_layer.weight"


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
def test_read_rows_equals_the_rows_of_read(tmp_path, dtype):
    from lql.sources.safetensors_io import SafetensorsReader
    rng = np.random.default_rng(0)
    a = rng.standard_normal((37, 5, 3)).astype(np.float32)
    if dtype == "F16":
        stored = a.astype(np.float16)
    elif dtype == "BF16":
        stored = (a.view(np.uint32) >> 16).astype(np.uint16)   # bf16 words, saved as raw u2
    else:
        stored = a
    path = tmp_path / "m.safetensors"
    save_file({"t": stored}, str(path))
    reader = SafetensorsReader([path])
    if dtype == "BF16":                                  # mark the raw words as BF16
        reader.tensors["t"].dtype = "BF16"
        expect = bf16_to_f32(stored.reshape(-1)).reshape(stored.shape)
    else:
        expect = stored.astype(np.float32)
    for lo, hi in [(0, 37), (0, 1), (5, 17), (36, 40), (20, 20)]:
        np.testing.assert_array_equal(reader.read_rows("t", lo, hi), expect[lo:hi])


@pytest.mark.skipif(not FIXTURE.is_dir(), reason="shared Gemma 4 fixture not present")
def test_streamed_per_layer_table_is_bit_identical(tmp_path, monkeypatch):
    whole = open_vindex(extract(FIXTURE, tmp_path / "whole", level="inference", dtype="f32",
                                progress=False))
    monkeypatch.setattr(extractor_mod, "STREAM_BYTES", 1024)   # force row blocks (~5 rows)
    calls = []
    from lql.sources.hf import HfSource
    original = HfSource.tensor_rows

    def spy(self, key, lo, hi):
        calls.append((key, lo, hi))
        return original(self, key, lo, hi)

    monkeypatch.setattr(HfSource, "tensor_rows", spy)
    streamed = open_vindex(extract(FIXTURE, tmp_path / "streamed", level="inference",
                                   dtype="f32", progress=False))
    assert len({c for c in calls if c[0] == PLE}) > 10          # it really went block by block
    np.testing.assert_array_equal(np.asarray(streamed.weights[PLE]), np.asarray(whole.weights[PLE]))
    assert streamed.manifest == whole.manifest
