"""INFER as bars of its top-n probabilities; INFER COMPARE as paired bars: the edited
model's rank-k token next to the base (overlay-free) model's rank-k token."""

from __future__ import annotations

import numpy as np

from ..result import Result
from .common import LqlFigure, is_number, new_figure, token_label

__all__ = ["infer_figure"]


def _f(v) -> float:
    return float(v) if is_number(v) else 0.0


def infer_figure(result: Result) -> LqlFigure:
    rows = sorted(result.rows, key=lambda r: int(r.get("rank") or 0))
    paired = "dense_probability" in result.columns
    fig = new_figure(max(6.0, 0.9 * len(rows) + 2), 4.0)
    ax = fig.subplots()
    ax.set_label("bars")
    x = np.arange(len(rows))
    w = 0.4 if paired else 0.7
    edited = [_f(r.get("probability")) for r in rows]
    bars = [("edited" if paired else "probability", x - (w / 2 if paired else 0), edited,
             [r.get("token") for r in rows], "tab:blue")]
    if paired:
        bars.append(("base", x + w / 2, [_f(r.get("dense_probability")) for r in rows],
                     [r.get("dense_token") for r in rows], "tab:gray"))
    for label, xs, vals, toks, colour in bars:
        ax.bar(xs, vals, w, label=label, color=colour, gid=label)
        for xi, v, t in zip(xs, vals, toks):
            ax.annotate(token_label(t, 12), (xi, v), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7, rotation=90 if paired else 0)
    ax.set_xticks(x, [str(r.get("rank")) for r in rows])
    ax.set_xlabel("rank")
    ax.set_ylabel("probability")
    top = max([v for _, _, vals, _, _ in bars for v in vals] + [0.01])
    ax.set_ylim(0, min(1.25, top * 1.3 + 0.05))
    prompt = token_label(result.meta.get("prompt"), 50)
    ax.set_title(("INFER COMPARE (edited vs base)" if paired else "INFER") +
                 (f": {prompt}" if prompt else ""), fontsize=10, loc="left")
    if paired:
        ax.legend(fontsize=8)
    return fig
