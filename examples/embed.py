"""Browse a vindex from Python: the query vector of an entity, the features it
fires, and its DESCRIBE edges.

    python examples/embed.py [VINDEX] [ENTITY]

VINDEX defaults to the test suite's SmolLM2 extraction (built on first use).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

import lql  # noqa: E402


def default_vindex() -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from vindex_fixtures import smollm2_vindex
    return smollm2_vindex()


def main(argv: list[str]) -> int:
    path = Path(argv[1]) if len(argv) > 1 else default_vindex()
    entity = argv[2] if len(argv) > 2 else "France"
    v = lql.open_vindex(path)
    q = v.embed(entity)                                  # mean token embedding × embed_scale
    print(f"{entity}: tokens {[v.token_text(i) for i in v.tokenizer.encode(' ' + entity, add_special_tokens=False).ids]}, "
          f"|query| = {np.linalg.norm(q):.3f}")
    lo, hi = v.layer_bands["knowledge"]
    layer = (lo + hi) // 2
    print(f"\nnearest features at layer {layer} (largest positive gate · query):")
    for r in v.gate_knn(layer, q, top=5, signed=True).rows:
        print(f"  L{r['layer']}:{r['feature']:<5} gate {r['gate']:7.3f}  -> {r['top_token']!r}")
    print(f"\nDESCRIBE {entity} (knowledge band L{lo}-{hi}):")
    res = v.describe(entity, verbosity="verbose")
    if res.message:
        print(" ", res.message)
    for r in res.rows[:10]:
        print(f"  {r['target']!r:>16}  gate {r['gate']:.3f}  L{r['layer_min']}-{r['layer_max']} "
              f"x{r['count']}  also {r['also']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
