"""Probe behind MODE KNN's scoped entries: does the last position tell *which relation* is
asked about a named entity, in wordings INSERT never saw?

    OMP_NUM_THREADS=1 python benchmarks/probe_relation_scope.py VINDEX LAYER[,LAYER...] [res|ffn]

For each fact of ``benchmarks/data/counterfact_edits.json``: keys = the vector (``res``: the
residual after the layer; ``ffn``: the FFN input at it) at the last position of the fact's
relation's wordings (``TEMPLATES`` + ``PARAPHRASES``) filled with the entity, minus a mean
(``ffn``: over every position of the shipped text sample; ``res``: over the probe's
prompts); rivals = the same for every other relation's wordings; the threshold = above
the entity's off-topic contexts (``insert.SCOPE_OFF``) by 0.03 and at least halfway to
the least similar pair of own keys.  Counted: how many of the held-out paraphrases fire
(own best key above the threshold and nearer than every rival), of the other relations'
held-out paraphrases about the same entity, and of five other off-topic sentences.
"without": the threshold alone, no rivals.  docs/EDITING.md, "Scoped KNN facts".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HELD_OFF = ("{entity} is best known for", "Yesterday I read an article about {entity}. It said",
            "Many people visit {entity} because", "The best thing about {entity} is",
            "{entity} is one of the")


def main() -> None:
    from lql.edit.insert import SCOPE_OFF
    from lql.edit.memit import SAMPLE
    from lql.edit.prompts import PARAPHRASES, TEMPLATES
    from lql.runtime.forward import states_many
    from lql.vindex import open_vindex
    view = open_vindex(sys.argv[1])
    layers = [int(x) for x in sys.argv[2].split(",")]
    kind = sys.argv[3] if len(sys.argv) > 3 else "res"
    facts = json.loads((ROOT / "benchmarks/data/counterfact_edits.json").read_text())["facts"]
    rels = [r for r in sorted(TEMPLATES) if r not in ("official-language", "birthplace",
                                                     "profession", "colour")]
    held = {}
    for f in facts:
        held.setdefault(f["relation"], f["paraphrases"])
    jobs = []
    for i, f in enumerate(facts):
        jobs += [(i, "key", w) for w in (TEMPLATES[f["relation"]], *PARAPHRASES[f["relation"]])]
        jobs += [(i, "pos", t) for t in f["paraphrases"]]
        jobs += [(i, "rival", w) for r in rels if r != f["relation"]
                 for w in (TEMPLATES[r], *PARAPHRASES.get(r, ()))]
        jobs += [(i, "other_relation", t) for r, ps in held.items() if r != f["relation"]
                 for t in ps]
        jobs += [(i, "off", w) for w in SCOPE_OFF] + [(i, "held_off", w) for w in HELD_OFF]
    prompts = [w.replace("{entity}", facts[i]["entity"]) for i, _, w in jobs]
    ids = view.tokenizer.encode(SAMPLE.read_text(encoding="utf-8"), add_special_tokens=False).ids
    chunks = [ids[k:k + 96] for k in range(0, len(ids), 96) if len(ids[k:k + 96]) >= 8]
    for layer in layers:
        packed = states_many(view, prompts, layer)
        x = np.asarray(packed.ffn_inputs[layer] if kind == "ffn" else packed.residuals[layer],
                       np.float64)
        if kind == "ffn":
            ordinary = states_many(view, chunks, layer, every_position=True)
            mu = np.concatenate([np.asarray(a, np.float64)
                                 for a in ordinary.ffn_inputs_all[layer]]).mean(0)
        else:
            mu = x.mean(0)
        xn = x - mu
        xn /= np.linalg.norm(xn, axis=1, keepdims=True)
        counted = ("pos", "other_relation", "held_off")
        fired = {t: 0 for t in counted}
        alone = {t: 0 for t in counted}
        total = {t: 0 for t in counted}
        for i in range(len(facts)):
            rows = {t: [j for j, job in enumerate(jobs) if job[0] == i and job[1] == t]
                    for t in ("key", "rival", "off", *counted)}
            keys, rivals = xn[rows["key"]], xn[rows["rival"]]
            off = float((xn[rows["off"]] @ keys.T).max())
            g = keys @ keys.T
            np.fill_diagonal(g, -1.0)
            limit = max(off + 0.03, 0.5 * (float(g.max(1).min()) + off))
            for t in counted:
                z = xn[rows[t]]
                own, riv = (z @ keys.T).max(1), (z @ rivals.T).max(1)
                fired[t] += int(((own > limit) & (own > riv)).sum())
                alone[t] += int((own > limit).sum())
                total[t] += len(own)
        print(f"layer {layer} ({kind}): fires on " + ", ".join(
            f"{t} {fired[t]}/{total[t]} (without rivals {alone[t]})" for t in counted), flush=True)


if __name__ == "__main__":
    main()
