"""Default layer bands (syntax / knowledge / output).

Where LARQL has a probe-validated table for a family and depth, that table is the default
(:data:`LARQL_BANDS`, transcribed from ``LayerBands::for_family`` in Divinci-AI/larql
4f6dfb4 crates/larql-vindex/src/config/types.rs:175-215); otherwise the bands come from the
layer count by LARQL's own fallback rule (types.rs:217-227): the first ``n·2//5`` layers
syntax, up to ``n·4//5`` knowledge, the rest output (≈ 40 / 40 / 20).  LARQL bands nothing
below 8 layers (types.rs:229-230, ``None``: one band); here such a model still gets three
bands (sharing layers when there are fewer than three).
"""

from __future__ import annotations

#: LARQL's fallback shares (types.rs:218-221): syntax ends at n·2//5, knowledge at n·4//5
SYNTAX_FIFTHS = 2
KNOWLEDGE_FIFTHS = 4
#: the fewest layers LARQL's fallback bands (types.rs:219)
MIN_LARQL_LAYERS = 8


def _b(s: tuple[int, int], k: tuple[int, int], o: tuple[int, int]) -> dict[str, list[int]]:
    return {"syntax": list(s), "knowledge": list(k), "output": list(o)}


#: LARQL's probe-validated bands by (LARQL family string, num_layers), types.rs:177-215
LARQL_BANDS: dict[tuple[str, int], dict[str, list[int]]] = {
    ("gemma3", 34): _b((0, 13), (14, 27), (28, 33)),        # types.rs:179
    ("gemma3", 42): _b((0, 16), (17, 34), (35, 41)),        # :180
    ("gemma2", 26): _b((0, 10), (11, 20), (21, 25)),        # :181
    ("gemma2", 42): _b((0, 16), (17, 34), (35, 41)),        # :182
    ("gemma2", 46): _b((0, 18), (19, 37), (38, 45)),        # :183
    ("gemma4", 30): _b((0, 11), (12, 23), (24, 29)),        # :186
    ("gemma4", 36): _b((0, 14), (15, 28), (29, 35)),        # :187
    ("gemma4", 35): _b((0, 13), (14, 27), (28, 34)),        # :188
    ("gemma4", 60): _b((0, 23), (24, 47), (48, 59)),        # :189
    ("llama", 32): _b((0, 12), (13, 25), (26, 31)),         # :192
    ("llama", 40): _b((0, 15), (16, 32), (33, 39)),         # :193
    ("llama", 80): _b((0, 31), (32, 63), (64, 79)),         # :194
    ("mistral", 32): _b((0, 12), (13, 25), (26, 31)),       # :197
    ("mixtral", 32): _b((0, 12), (13, 25), (26, 31)),       # :198
    ("qwen2", 28): _b((0, 10), (11, 22), (23, 27)),         # :201
    ("qwen2", 32): _b((0, 12), (13, 25), (26, 31)),         # :202
    ("qwen2", 40): _b((0, 15), (16, 32), (33, 39)),         # :203
    ("qwen2", 64): _b((0, 25), (26, 51), (52, 63)),         # :204
    ("qwen2", 80): _b((0, 31), (32, 63), (64, 79)),         # :205
    ("phi", 32): _b((0, 12), (13, 25), (26, 31)),           # :208
    ("phi", 40): _b((0, 15), (16, 32), (33, 39)),           # :209
    ("gpt2", 12): _b((0, 4), (5, 9), (10, 11)),             # :212
    ("gpt2", 24): _b((0, 9), (10, 19), (20, 23)),           # :213
    ("gpt2", 36): _b((0, 14), (15, 28), (29, 35)),          # :214
    ("gpt2", 48): _b((0, 19), (20, 38), (39, 47)),          # :215
}


def larql_bands(family: str | None, num_layers: int) -> dict[str, list[int]] | None:
    """LARQL's table entry for ``family`` (LARQL's family string: ``arch.family()``, e.g.
    ``gemma3``, ``qwen2``) at ``num_layers``, or ``None`` when its table has none."""
    hit = LARQL_BANDS.get((str(family or ""), int(num_layers)))
    return {k: list(v) for k, v in hit.items()} if hit else None


def derive_bands(num_layers: int) -> dict[str, list[int]]:
    """Inclusive ``[lo, hi]`` ranges from the layer count: LARQL's fallback (≈ 40 / 40 / 20,
    types.rs:217-227) from 8 layers up; below that every band gets at least one layer when
    there are three or more, and bands share layers when there are fewer."""
    n = int(num_layers)
    if n <= 0:
        raise ValueError(f"a model needs at least one layer, not {num_layers}")
    if n >= MIN_LARQL_LAYERS:
        syntax_end = n * SYNTAX_FIFTHS // 5
        knowledge_end = n * KNOWLEDGE_FIFTHS // 5
        return {"syntax": [0, syntax_end - 1], "knowledge": [syntax_end, knowledge_end - 1],
                "output": [knowledge_end, n - 1]}
    if n < 3:
        return {"syntax": [0, 0], "knowledge": [0, n - 1], "output": [n - 1, n - 1]}
    syntax = max(1, round(n * 0.4))
    output = max(1, round(n * 0.2))
    if syntax + output >= n:
        syntax, output = 1, 1
    return {"syntax": [0, syntax - 1],
            "knowledge": [syntax, n - output - 1],
            "output": [n - output, n - 1]}
