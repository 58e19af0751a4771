"""Default layer bands (syntax / knowledge / output) derived from the layer count."""

from __future__ import annotations

SYNTAX_SHARE = 0.30
OUTPUT_SHARE = 0.25


def derive_bands(num_layers: int) -> dict[str, list[int]]:
    """Inclusive ``[lo, hi]`` ranges: first ~30% syntax, last ~25% output, the
    middle (~45%) knowledge.  Every band gets at least one layer when there are
    three or more; with fewer, bands share layers."""
    n = int(num_layers)
    if n <= 0:
        raise ValueError(f"a model needs at least one layer, not {num_layers}")
    if n < 3:
        return {"syntax": [0, 0], "knowledge": [0, n - 1], "output": [n - 1, n - 1]}
    syntax = max(1, round(n * SYNTAX_SHARE))
    output = max(1, round(n * OUTPUT_SHARE))
    if syntax + output >= n:
        syntax, output = 1, 1
    return {"syntax": [0, syntax - 1],
            "knowledge": [syntax, n - output - 1],
            "output": [n - output, n - 1]}
