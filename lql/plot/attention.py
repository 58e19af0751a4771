"""EXPLAIN INFER WITH ATTENTION: the attention rows as two heatmaps.

EXPLAIN INFER keeps, per layer, the TOP n heads by their largest weight from the
last position (rows ``kind = "attention"``: ``layer, head, position,
attended_token, attention``). Left: layer × head, the weight of each listed head
(its attended token written in the cell); right: layer × attended position, the
largest listed weight onto each position. Heads and positions a layer did not list
stay blank — the plot shows exactly the result, not the full pattern.
"""

from __future__ import annotations

import numpy as np

from ..result import Result
from .common import CMAP, LqlFigure, new_figure, token_label

__all__ = ["attention_figure", "attention_grids"]


def attention_grids(result: Result):
    """``(layers, heads, positions, position labels, w[layer, head], tokens[layer][head],
    w[layer, position])`` from the attention rows (missing cells NaN)."""
    rows = [r for r in result.rows if r.get("kind") == "attention"]
    layers = sorted({int(r["layer"]) for r in rows})
    heads = sorted({int(r["head"]) for r in rows})
    positions = sorted({int(r["position"]) for r in rows})
    tok_of = {int(r["position"]): r.get("attended_token") for r in rows}
    labels = [f"{p}:{token_label(tok_of.get(p), 10)}" for p in positions]
    li = {v: i for i, v in enumerate(layers)}
    hi = {v: i for i, v in enumerate(heads)}
    pi = {v: i for i, v in enumerate(positions)}
    by_head = np.full((len(layers), len(heads)), np.nan)
    head_tok = [["" for _ in heads] for _ in layers]
    by_pos = np.full((len(layers), len(positions)), np.nan)
    for r in rows:
        i, h, p, w = li[int(r["layer"])], hi[int(r["head"])], pi[int(r["position"])], float(r["attention"])
        if np.isnan(by_head[i, h]) or w > by_head[i, h]:
            by_head[i, h] = w
            head_tok[i][h] = str(r.get("attended_token") or "")
        if np.isnan(by_pos[i, p]) or w > by_pos[i, p]:
            by_pos[i, p] = w
    return layers, heads, positions, labels, by_head, head_tok, by_pos


def attention_figure(result: Result, *, annotate: bool = True) -> LqlFigure:
    layers, heads, positions, labels, by_head, head_tok, by_pos = attention_grids(result)
    n_l = len(layers)
    fig = new_figure(max(8.0, 0.55 * (len(heads) + len(positions)) + 4), max(3.0, 0.3 * n_l + 1.5))
    ax_h, ax_p = fig.subplots(1, 2)
    step = max(1, (n_l + 23) // 24)
    ticks = range(0, n_l, step)
    for ax, grid, xl, xt, name in ((ax_h, by_head, "head", [str(h) for h in heads], "heads"),
                                   (ax_p, by_pos, "attended position", labels, "positions")):
        ax.set_label(name)
        im = ax.imshow(grid, aspect="auto", origin="lower", cmap=CMAP, vmin=0.0, vmax=1.0,
                       interpolation="nearest")
        ax.set_xticks(range(len(xt)), xt, rotation=45 if name == "positions" else 0,
                      ha="right" if name == "positions" else "center", fontsize=7)
        ax.set_yticks(list(ticks), [str(layers[i]) for i in ticks])
        ax.set_xlabel(xl)
        ax.set_ylabel("layer")
    ax_h.set_title("attention weight from the last position, per head", fontsize=10, loc="left")
    ax_p.set_title("largest listed weight onto each position", fontsize=10, loc="left")
    fig.colorbar(im, ax=[ax_h, ax_p], fraction=0.03, pad=0.01).set_label("attention weight")
    if annotate and by_head.size <= 1500:
        for i in range(n_l):
            for h in range(len(heads)):
                if not np.isnan(by_head[i, h]):
                    ax_h.text(h, i, token_label(head_tok[i][h], 7), ha="center", va="center",
                              fontsize=5.5, color="black" if by_head[i, h] >= 0.6 else "white",
                              gid="cell")
    return fig
