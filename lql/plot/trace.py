"""TRACE: the logit lens as a heatmap (layers × positions, the top token written in
each cell, its probability as the colour) and, with FOR, the token's probability /
rank trajectory and the attention / FFN split of its direct logit attribution.

Everything comes from TRACE's rows: ``layer, top_token, top_probability`` (plus
``position, position_token`` with POSITIONS ALL; without it the one column is the
last position) and, with FOR, ``rank, probability, attn_logit, ffn_logit``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator

from ..result import Result
from .common import CMAP, LqlFigure, new_figure, token_label

__all__ = ["trace_figure", "lens_grid", "MAX_ANNOTATED"]

#: cells beyond this many are coloured but not written in (the text would be unreadable)
MAX_ANNOTATED = 1500


def lens_grid(result: Result) -> tuple[list[int], list[Any], list[str], np.ndarray, list[list[str]]]:
    """``(layers, positions, position labels, probability[layer, position], top token
    text[layer][position])`` from TRACE's rows (a missing cell is NaN / "")."""
    rows = result.rows
    layers = sorted({int(r["layer"]) for r in rows})
    if any("position" in r for r in rows):
        positions: list[Any] = sorted({int(r["position"]) for r in rows})
        tok_of = {int(r["position"]): r.get("position_token") for r in rows}
        labels = [f"{p}:{token_label(tok_of.get(p), 10)}" for p in positions]
    else:
        n = result.meta.get("num_tokens")
        positions = [int(n) - 1 if isinstance(n, int) else "last"]
        labels = [f"{positions[0]} (last)" if isinstance(n, int) else "last"]
    li = {layer: i for i, layer in enumerate(layers)}
    pi = {p: j for j, p in enumerate(positions)}
    prob = np.full((len(layers), len(positions)), np.nan)
    text = [["" for _ in positions] for _ in layers]
    for r in rows:
        i = li[int(r["layer"])]
        j = pi[int(r["position"])] if "position" in r else 0
        prob[i, j] = float(r["top_probability"])
        text[i][j] = str(r.get("top_token") or "")
    return layers, positions, labels, prob, text


def _last_position_rows(result: Result) -> list[dict]:
    rows = result.rows
    if any("position" in r for r in rows):
        last = max(int(r["position"]) for r in rows)
        rows = [r for r in rows if int(r["position"]) == last]
    return sorted(rows, key=lambda r: int(r["layer"]))


def trace_figure(result: Result, *, annotate: bool = True) -> LqlFigure:
    layers, positions, labels, prob, text = lens_grid(result)
    has_for = "probability" in result.columns and any("rank" in r for r in result.rows)
    n_l, n_p = len(layers), len(positions)
    heat_h = max(2.5, 0.32 * n_l + 1.2)
    width = max(6.0, min(24.0, 1.05 * n_p + 2.5))
    heights = [heat_h] + ([2.6, 2.6] if has_for else [])
    fig = new_figure(width, sum(heights))
    axes = fig.subplots(len(heights), 1, squeeze=False, height_ratios=heights)[:, 0]

    ax = axes[0]
    ax.set_label("heatmap")
    im = ax.imshow(prob, aspect="auto", origin="lower", cmap=CMAP, vmin=0.0, vmax=1.0,
                   interpolation="nearest")
    ax.set_xticks(range(n_p), labels, rotation=45 if n_p > 1 else 0, ha="right" if n_p > 1 else "center")
    step = max(1, (n_l + 23) // 24)
    ax.set_yticks(range(0, n_l, step), [str(layers[i]) for i in range(0, n_l, step)])
    ax.set_xlabel("position")
    ax.set_ylabel("layer")
    prompt = str(result.meta.get("prompt") or "")
    ax.set_title("logit lens (top token per layer × position)"
                 + (f": {token_label(prompt, 60)}" if prompt else ""), fontsize=10, loc="left")
    cb = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.01)
    cb.set_label("top-token probability")
    if annotate and n_l * n_p <= MAX_ANNOTATED:
        size = 7 if n_p <= 12 else 5.5
        for i in range(n_l):
            for j in range(n_p):
                if text[i][j] == "" and np.isnan(prob[i, j]):
                    continue
                p = prob[i, j]
                ax.text(j, i, token_label(text[i][j], 9), ha="center", va="center", fontsize=size,
                        color="black" if p >= 0.6 else "white", gid="cell")

    if has_for:
        rows = _last_position_rows(result)
        xs = [int(r["layer"]) for r in rows]
        tok = repr(token_label(result.meta.get("for_token"), 20))
        ax1 = axes[1]
        ax1.set_label("trajectory")
        ax1.plot(xs, [float(r["probability"]) for r in rows], marker="o", color="tab:blue",
                 label="probability")
        ax1.set_ylim(-0.02, 1.02)
        ax1.set_xlabel("layer")
        ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax1.set_ylabel("probability", color="tab:blue")
        ax1.set_title(f"FOR {tok}: probability and rank by layer (last position)", fontsize=10,
                      loc="left")
        ax2 = ax1.twinx()
        ax2.set_label("rank")
        ax2.plot(xs, [int(r["rank"]) for r in rows], marker="s", color="tab:orange",
                 linestyle="--", label="rank")
        ax2.set_yscale("log")
        ax2.invert_yaxis()                        # rank 1 at the top
        ax2.set_ylabel("rank (log, 1 at top)", color="tab:orange")

        ax3 = axes[2]
        ax3.set_label("dla")
        x = np.arange(len(xs))
        w = 0.4
        ax3.bar(x - w / 2, [float(r.get("attn_logit") or 0.0) for r in rows], w,
                label="attention", color="tab:purple")
        ax3.bar(x + w / 2, [float(r.get("ffn_logit") or 0.0) for r in rows], w,
                label="FFN", color="tab:green")
        ax3.axhline(0.0, color="grey", linewidth=0.6)
        ax3.set_xticks(x[::step], [str(v) for v in xs[::step]])
        ax3.set_xlabel("layer")
        ax3.set_ylabel("logit contribution")
        ax3.set_title(f"direct logit attribution to {tok}: attention vs FFN", fontsize=10,
                      loc="left")
        ax3.legend(fontsize=8, loc="best")
    return fig
