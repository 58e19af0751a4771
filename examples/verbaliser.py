"""The activation-verbaliser round trip, end to end in lql (no torch):

    python examples/verbaliser.py [--model smollm2] [--layer 15] [--out DIR]

1. **Capture**: run the subject model on a prompt and keep the residual after layer L at
   the last position (lql's Python API: the target's model with a ``Record``) → ``h.npy``.
2. **An adapter**: a PEFT-format LoRA folder (``adapter_config.json`` with a regex
   ``target_modules`` over q/k/v/o/gate/up/down, ``adapter_model.safetensors``, and an
   ``nla_meta.yaml`` holding ``injection_scale: √d_model``). A real verbaliser's adapter
   is *trained* to read the injected vector; this one is random (small B), so its words
   mean nothing — the example shows the plumbing, not a trained explainer.
3. **Inject + generate**: ``USE MODEL ... WITH ADAPTER`` merges the LoRA at load;
   ``INFER "... <placeholder> ..." GENERATE n INJECT "h.npy" AT TOKEN "<placeholder>"``
   replaces the placeholder's input embedding with ``h/|h| × injection_scale`` (read from
   nla_meta.yaml) and generates.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PLACEHOLDER = "<filename>"     # a special token SmolLM2's tokenizer has as one piece
TARGETS = r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def capture(session, prompt: str, layer: int) -> np.ndarray:
    from lql.infer.engine import target_for
    from lql.model import Record
    target = target_for(session)
    ids = target.tokenizer.encode(prompt).ids
    out = target.model.forward(ids, record=Record(residuals="last", layers=frozenset([layer])))
    return np.asarray(out.residuals[layer], dtype=np.float32)


def random_adapter(source, folder: Path, layer: int, r: int = 8, alpha: float = 16.0,
                   seed: int = 0) -> int:
    """A random LoRA over every attention / MLP projection of ``source``; returns the count."""
    from safetensors.numpy import save_file
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key in source.keys():
        module = source.family_spec.hf_key(key)[:-len(".weight")] if key.endswith(".weight") else None
        if module is None or not re.fullmatch(TARGETS, module):
            continue
        out_dim, in_dim = source.shape(key)
        tensors[f"base_model.model.{module}.lora_A.weight"] = \
            (rng.standard_normal((r, in_dim)) / math.sqrt(in_dim)).astype(np.float32)
        tensors[f"base_model.model.{module}.lora_B.weight"] = \
            (rng.standard_normal((out_dim, r)) * 0.002).astype(np.float32)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": TARGETS,
        "bias": "none", "use_rslora": False, "lora_dropout": 0.0}, indent=1))
    (folder / "nla_meta.yaml").write_text(
        f"# activation verbaliser metadata\ninjection_scale: {math.sqrt(source.hidden_size):.6f}\n"
        f"layer: {layer}\nplaceholder: '{PLACEHOLDER}'\n")
    return len(tensors) // 2



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--prompt", default="The Eiffel Tower is in the city of")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--generate", type=int, default=16)
    args = ap.parse_args()
    from lql.session import Session

    work = args.out or Path(tempfile.mkdtemp(prefix="verbaliser-"))
    work.mkdir(parents=True, exist_ok=True)
    s = Session(cwd=work)

    # 1. capture the subject model's residual
    s.query(f'USE MODEL "{args.model}"')
    h = capture(s, args.prompt, args.layer)
    np.save(work / "h.npy", h)
    print(f"1. captured the residual after layer {args.layer} at the last position of "
          f"{args.prompt!r}: |h| = {np.linalg.norm(h):.1f} → {work / 'h.npy'}")

    # 2. the verbaliser's adapter (random here; a trained one is read the same way)
    n = random_adapter(s.model_source, work / "verbaliser-lora", args.layer)
    print(f"2. wrote a random LoRA adapter over {n} modules (+ nla_meta.yaml) → {work / 'verbaliser-lora'}")

    # 3. load it, inject, generate
    r = s.query(f'USE MODEL "{args.model}" WITH ADAPTER "verbaliser-lora"')
    print(f"3. {r.message}")
    question = f"The hidden thought {PLACEHOLDER} is about"
    g = s.query(f'INFER "{question}" RAW GENERATE {args.generate} '
                f'INJECT "h.npy" AT TOKEN "{PLACEHOLDER}"')
    inj = g.meta["inject"][0]
    print(f"   injected at position(s) {inj['positions']} with scale {inj['scale']:.2f} "
          f"({inj['scale_from']})")
    print(f"   {question!r} → {g.message!r}")
    plain = s.query(f'INFER "{question}" RAW GENERATE {args.generate}')
    print(f"   without the injection → {plain.message!r}")


if __name__ == "__main__":
    main()
