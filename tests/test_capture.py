"""CAPTURE: activation files load in numpy and hold transformers' hidden_states[n + 1]
(= a forward hook on decoder layer n's output) at AT LAYER n; the three formats' layouts;
the errors."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_fixtures import smollm2_hf_dir, tiny_model_dir  # noqa: E402
from vindex_fixtures import smollm2_vindex, tiny_vindex  # noqa: E402

from lql.errors import ExecutionError  # noqa: E402
from lql.session import Session  # noqa: E402

PROMPTS = ["The capital of France is", "Once upon a time", "Water boils at one hundred degrees"]


@functools.cache
def _tiny() -> Path:
    return tiny_vindex("llama", level="inference")


@pytest.fixture
def session(tmp_path):
    s = Session(cwd=tmp_path)
    s.query(f'USE "{_tiny()}"')
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return s


def _load(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".npy":
        return {"activations": np.load(path)}
    if path.suffix == ".npz":
        with np.load(path) as z:            # no pickles: allow_pickle stays False
            return {k: z[k] for k in z.files}
    from safetensors.numpy import load_file
    return load_file(str(path))


def test_layouts_and_agreement_with_trace_save(session, tmp_path):
    """ALL positions of every prompt, in each format; the rows equal TRACE SAVE's
    residuals after the same layer (``residuals[n + 1]``, [0] being the embedding)."""
    n = 1
    for suffix in (".npz", ".safetensors", ".npy"):
        out = tmp_path / f"acts{suffix}"
        r = session.query(f'CAPTURE FROM FILE "prompts.txt" AT LAYER {n} POSITIONS ALL '
                          f'INTO "{out.name}"')
        assert r.statement == "CAPTURE" and r.rows[0]["format"] == suffix[1:]
        z = _load(out)
        acts = z["activations"]
        assert acts.dtype == np.float32 and acts.shape[1] == session.vindex.hidden_size
        start = 0
        for i, prompt in enumerate(PROMPTS):
            session.query(f'TRACE "{prompt}" SAVE "t.npz" RAW')
            with np.load(tmp_path / "t.npz") as t:
                want, ids = t["residuals"][n + 1], t["token_ids"]
            if suffix != ".npy":
                lo, hi = z["offsets"][i], z["offsets"][i + 1]
                assert lo == start and hi - lo == len(ids)
                assert z["token_ids"][lo:hi].tolist() == ids.tolist()
                assert z["positions"][lo:hi].tolist() == list(range(len(ids)))
            np.testing.assert_array_equal(acts[start:start + len(ids)], want)
            start += len(ids)
        assert acts.shape[0] == start == r.rows[0]["rows"]
    with np.load(tmp_path / "acts.npz") as z:
        assert int(z["layer"]) == n and z["prompts"].tolist() == PROMPTS
    from safetensors import safe_open
    with safe_open(str(tmp_path / "acts.safetensors"), framework="numpy") as f:
        meta = f.metadata()
    assert meta["layer"] == str(n) and meta["positions_mode"] == "all"
    assert json.loads(meta["prompts"]) == PROMPTS
    # no temporary files left behind by the atomic writes
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "acts.npy", "acts.npz", "acts.safetensors", "prompts.txt", "t.npz"]


def test_last_positions_and_one_prompt(session, tmp_path):
    session.query('CAPTURE FROM FILE "prompts.txt" AT LAYER 2 INTO "last.npz"')
    with np.load(tmp_path / "last.npz") as z:
        assert z["activations"].shape[0] == len(PROMPTS)
        assert z["offsets"].tolist() == [0, 1, 2, 3]
        last = z["activations"][0]
    r = session.query(f'CAPTURE "{PROMPTS[0]}" AT LAYER 2 INTO "one.npy"')
    assert r.rows[0]["rows"] == 1 and r.rows[0]["positions"] == "last"
    np.testing.assert_array_equal(np.load(tmp_path / "one.npy")[0], last)


def test_errors(session, tmp_path):
    with pytest.raises(ExecutionError, match=r"must end in \.npy, \.npz or \.safetensors"):
        session.query('CAPTURE "x" AT LAYER 0 INTO "a.txt"')
    with pytest.raises(ExecutionError, match="does not exist"):
        session.query('CAPTURE "x" AT LAYER 0 INTO "nope/a.npy"')
    with pytest.raises(ExecutionError, match="layer out of range"):
        session.query('CAPTURE "x" AT LAYER 99 INTO "a.npy"')
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(ExecutionError, match="has no prompts"):
        session.query('CAPTURE FROM FILE "empty.txt" AT LAYER 0 INTO "a.npy"')
    with pytest.raises(ExecutionError, match="cannot read prompt file"):
        session.query('CAPTURE FROM FILE "missing.txt" AT LAYER 0 INTO "a.npy"')
    assert not (tmp_path / "a.npy").exists()
    with pytest.raises(Exception, match="No vindex in use"):
        Session(cwd=tmp_path).query('CAPTURE "x" AT LAYER 0 INTO "a.npy"')


# --------------------------------------------------------------------------- against transformers

def _reference(folder: Path, prompts: list[str], layer: int):
    """Per prompt: (ids, hidden_states[layer + 1], the output a forward hook on
    model.layers[layer] sees)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(folder), dtype=torch.float32, attn_implementation="eager").eval()
    seen: list[np.ndarray] = []

    def hook(module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        seen.append(out[0].detach().numpy().copy())

    handle = model.model.layers[layer].register_forward_hook(hook)
    refs = []
    try:
        for text in prompts:
            ids = tok(text)["input_ids"]
            with torch.no_grad():
                hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
            refs.append((ids, hs[layer + 1][0].numpy(), seen.pop()))
    finally:
        handle.remove()
    return refs


def _check(session: Session, tmp_path: Path, folder: Path, layer: int, atol: float,
           rtol: float = 0.0):
    session.query(f'CAPTURE FROM FILE "prompts.txt" AT LAYER {layer} POSITIONS ALL '
                  'INTO "all.safetensors"')
    session.query(f'CAPTURE FROM FILE "prompts.txt" AT LAYER {layer} INTO "last.npy"')
    z = _load(tmp_path / "all.safetensors")
    last = np.load(tmp_path / "last.npy")
    for i, (ids, hs, hooked) in enumerate(_reference(folder, PROMPTS, layer)):
        np.testing.assert_allclose(hs, hooked, atol=0, rtol=0)      # the same point in torch
        lo, hi = z["offsets"][i], z["offsets"][i + 1]
        assert z["token_ids"][lo:hi].tolist() == ids
        np.testing.assert_allclose(z["activations"][lo:hi], hs, atol=atol, rtol=rtol)
        np.testing.assert_allclose(last[i], hs[-1], atol=atol, rtol=rtol)


@pytest.mark.parity
@pytest.mark.parametrize("layer", [0, 1])
def test_tiny_capture_equals_hidden_states(session, tmp_path, layer):
    _check(session, tmp_path, tiny_model_dir("llama"), layer, atol=1e-5)


@pytest.mark.parity
@pytest.mark.slow
def test_smollm2_capture_equals_hidden_states(tmp_path):
    s = Session(cwd=tmp_path)
    s.query(f'USE "{smollm2_vindex("inference", "f32", source="hf")}"')
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    # float32 both sides; SmolLM2's first position carries a ~2e4 "massive activation", where
    # one float32 rounding step is ~2e-3: hence the relative tolerance
    _check(s, tmp_path, smollm2_hf_dir(), 20, atol=1e-3, rtol=1e-5)
