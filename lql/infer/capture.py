"""CAPTURE: residual-stream activations at one layer, for one prompt or a prompt file,
written to ``.npy`` / ``.npz`` / ``.safetensors`` (atomically, :mod:`lql.atomic`).

The vector captured at ``AT LAYER n`` is the residual stream *after* layer ``n`` — the
output of decoder layer ``n`` that a forward hook on ``model.layers[n]`` sees, and
transformers' ``hidden_states[n + 1]`` (except for the last layer, where transformers
applies the final norm to ``hidden_states[-1]``; CAPTURE never does). It is
``ForwardOutput.residuals[n]`` / what :class:`lql.model.Hooks` ``residual(n, h)`` sees.

Prompts are tokenised raw (``tokenizer(text)``, BOS where the tokenizer adds one, no chat
template); every non-blank line of a file is one prompt, run one forward pass at a time
(the numpy engine runs one sequence per pass). ``POSITIONS LAST`` (the default) keeps the
last position of each prompt, ``ALL`` every position.

Layout (``N`` rows: one per prompt for LAST, one per token for ALL; ``H`` the hidden size):

* ``.npy``: the ``[N, H]`` float32 array only;
* ``.npz``: ``activations`` ``[N, H]`` float32, ``token_ids`` ``[N]`` int64 (the token at
  each row), ``offsets`` ``[P + 1]`` int64 (prompt ``i``'s rows are
  ``offsets[i]:offsets[i + 1]``), ``positions`` ``[N]`` int64 (each row's position in its
  prompt), ``layer`` (int64 scalar), ``prompts`` ``[P]`` str;
* ``.safetensors``: the same tensors (``activations`` F32; ``token_ids``, ``offsets``,
  ``positions`` I64); ``layer``, ``positions_mode``, ``model`` and ``prompts`` (a JSON
  list) in the header's ``__metadata__``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_bytes, atomic_writer
from ..errors import ExecutionError
from .sae import layer_residuals, prompt_ids

__all__ = ["capture", "FORMATS"]

FORMATS = (".npy", ".npz", ".safetensors")


def _check_output(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise ExecutionError(f"CAPTURE INTO {str(path)!r}: the file must end in .npy, .npz or "
                             ".safetensors")
    if not path.parent.is_dir():
        raise ExecutionError(f"CAPTURE INTO {str(path)!r}: folder {str(path.parent)!r} does "
                             "not exist")
    return suffix


def capture(target, prompts: list[str], *, layer: int, output: Path, all_positions: bool = False,
            check: Callable[[], None] | None = None, progress: bool | str | None = None
            ) -> dict[str, Any]:
    """Run every prompt, keep the residual after ``layer``, write ``output``; a summary dict."""
    from ..vindex.progress import progress_display
    model = target.model
    if not 0 <= int(layer) < model.num_layers:
        raise ExecutionError(f"AT LAYER {layer}: layer out of range — this model has layers "
                             f"0-{model.num_layers - 1}")
    output = Path(output)
    suffix = _check_output(output)
    blocks: list[np.ndarray] = []
    tok_ids: list[np.ndarray] = []
    pos_ids: list[np.ndarray] = []
    offsets = [0]
    with progress_display(progress) as bars, bars.stage("capture", total=len(prompts)) as bar:
        for prompt in prompts:
            if check is not None:
                check()
            ids = prompt_ids(target, prompt)
            res = layer_residuals(target, ids, int(layer))          # [T, H]
            keep = np.arange(len(ids)) if all_positions else np.array([len(ids) - 1])
            blocks.append(res[keep])
            tok_ids.append(np.asarray(ids, dtype=np.int64)[keep])
            pos_ids.append(keep.astype(np.int64))
            offsets.append(offsets[-1] + len(keep))
            bar.advance(1)
    acts = np.ascontiguousarray(np.concatenate(blocks, axis=0), dtype=np.float32)
    arrays = {"activations": acts, "token_ids": np.concatenate(tok_ids),
              "offsets": np.asarray(offsets, dtype=np.int64), "positions": np.concatenate(pos_ids)}
    if suffix == ".npy":
        with atomic_writer(output) as fh:
            np.save(fh, acts)
    elif suffix == ".npz":
        with atomic_writer(output) as fh:
            every: dict[str, Any] = {**arrays, "layer": np.array(int(layer), dtype=np.int64),
                                     "prompts": np.array(prompts, dtype=np.str_)}
            np.savez(fh, **every)
    else:
        from safetensors.numpy import save
        meta = {"layer": str(int(layer)), "positions_mode": "all" if all_positions else "last",
                "model": str(target.name or ""), "prompts": json.dumps(prompts),
                "residual": f"after layer {int(layer)} (transformers hidden_states[{int(layer) + 1}])"}
        atomic_write_bytes(output, save(arrays, metadata=meta))
    return {"path": str(output), "layer": int(layer), "prompts": len(prompts),
            "rows": int(acts.shape[0]), "hidden_size": int(acts.shape[1]),
            "positions": "all" if all_positions else "last", "format": suffix.lstrip(".")}
