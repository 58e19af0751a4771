"""Reading SAEs from disk: the sae_lens folder layout and plain TopK checkpoints.

* **sae_lens folder**: ``cfg.json`` + ``sae_weights.safetensors`` (``W_enc``, ``W_dec``,
  ``b_enc``, ``b_dec``, and ``threshold`` — or ``log_threshold`` — for JumpReLU). The
  config's ``architecture`` (``standard`` | ``topk`` | ``jumprelu``; configs older than
  sae_lens 6 name TopK by ``activation_fn_str = "topk"`` with ``activation_fn_kwargs.k``),
  ``k``, ``apply_b_dec_to_input``, ``rescale_acts_by_decoder_norm`` and
  ``normalize_activations`` (only ``"none"`` is supported) are followed; the hook point
  is ``metadata.hook_name`` (sae_lens 6) or ``hook_name`` / ``hook_point`` (older).
* **plain checkpoint**: one ``.safetensors`` or ``.npz`` file holding ``W_enc``, ``W_dec``,
  ``b_enc``, ``b_dec`` and ``k`` (a one-element integer tensor, or — safetensors — a
  ``"k"`` entry in the header's ``__metadata__``); optionally ``threshold`` (then it is a
  JumpReLU SAE) . A plain file with no ``k`` and no threshold is a standard ReLU SAE.
  ``W_enc`` may be stored ``[d_sae, d_in]`` (an ``nn.Linear`` weight): it is transposed
  when only that reading fits ``W_dec``.
* **.pt / .pth / .bin** (torch pickles): refused — the runtime has no torch; the error
  gives the one-line conversion to run where torch is installed.

Labels ("catalogue"): a ``labels.json`` in the SAE folder (or ``<file stem>.labels.json``
next to a plain file): either ``{"<feature>": "<label>"}`` or a list of objects with an
``index``/``feature`` and a ``label``/``description`` (Neuronpedia's export).

Hook names → layer (this project's index: the residual *after* layer n, transformers'
``hidden_states[n + 1]``): ``blocks.n.hook_resid_post`` → n; ``blocks.n.hook_resid_pre``
(the residual *entering* block n) → n − 1; ``model.layers.n`` / ``layers.n`` (the output
of decoder layer n, a forward hook's view) → n. Other hook points (``hook_resid_mid``,
``hook_mlp_out``, ``hook_attn_out``, ``hook_z``, ...) are not the residual stream after a
layer and are refused.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from .sae import Sae, SaeError

__all__ = ["load_sae", "layer_of_hook", "TORCH_CONVERSION"]

_TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")

#: the one line that turns a torch checkpoint into a plain safetensors TopK file
TORCH_CONVERSION = (
    "python -c \"import sys,torch; from safetensors.torch import save_file; "
    "sd=torch.load(sys.argv[1], map_location='cpu'); "
    "save_file({k: (v if torch.is_tensor(v) else torch.tensor(v)).float().contiguous() "
    "for k, v in sd.items()}, sys.argv[2])\" sae.pt sae.safetensors")

_HOOK_POST = re.compile(r"^(?:blocks|model\.layers|layers|model\.model\.layers|transformer\.h)"
                        r"\.(\d+)(?:\.hook_resid_post|\.output)?$")
_HOOK_PRE = re.compile(r"^blocks\.(\d+)\.hook_resid_pre$")


def layer_of_hook(hook_name: str, path: Path | None = None) -> int:
    """Our layer index for an sae_lens / transformers hook name (see the module doc)."""
    name = hook_name.strip()
    m = _HOOK_POST.match(name)
    if m:
        return int(m.group(1))
    m = _HOOK_PRE.match(name)
    if m:
        n = int(m.group(1))
        if n == 0:
            raise SaeError(f"SAE hook {hook_name!r} reads the embedding (the residual entering "
                           "block 0), not the output of a layer; not supported", path)
        return n - 1
    raise SaeError(f"SAE hook {hook_name!r} is not the residual stream after a layer "
                   "(supported: blocks.N.hook_resid_post, blocks.N.hook_resid_pre, "
                   "model.layers.N); give AT LAYER n only for SAEs trained on that residual",
                   path)


def _read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from ..sources.safetensors_io import SafetensorsReader, read_header
    try:
        header, _ = read_header(path)
        reader = SafetensorsReader([path])
    except SaeError:
        raise
    except Exception as exc:          # SourceError and friends: re-raised as an SAE error
        raise SaeError(f"cannot read SAE weights {path}: {exc}", path) from None
    meta = {str(k): str(v) for k, v in (header.get("__metadata__") or {}).items()}
    out: dict[str, np.ndarray] = {}
    for name in reader.names():
        dtype = reader.dtype(name)
        if dtype in ("F32", "F16", "BF16", "F64"):
            out[name] = reader.read(name) if dtype != "F64" else _raw(path, name)
        else:
            out[name] = _raw(path, name)
    return out, meta


def _raw(path: Path, name: str) -> np.ndarray:
    from safetensors import safe_open
    with safe_open(str(path), framework="numpy") as f:
        return np.asarray(f.get_tensor(name))


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: np.asarray(z[k]) for k in z.files}
    except (OSError, ValueError) as exc:
        raise SaeError(f"cannot read SAE checkpoint {path}: {exc}", path) from None


def _labels(path: Path | None) -> dict[int, str]:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SaeError(f"cannot read SAE labels {path}: {exc}", path) from None
    out: dict[int, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            if str(k).lstrip("-").isdigit() and v is not None:
                out[int(k)] = str(v)
    elif isinstance(data, list):
        for item in data:
            if not isinstance(item, dict):
                continue
            idx = item.get("index", item.get("feature"))
            label = item.get("label", item.get("description"))
            if idx is not None and label is not None and str(idx).lstrip("-").isdigit():
                out[int(idx)] = str(label)
    else:
        raise SaeError(f"SAE labels {path}: expected an object or a list", path)
    return out


def _need(tensors: dict[str, np.ndarray], path: Path, *names: str) -> None:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise SaeError(f"SAE {path} has no {', '.join(missing)} (found: "
                       f"{', '.join(sorted(tensors)) or 'nothing'})", path)


def _int_of(value: Any, what: str, path: Path) -> int:
    try:
        arr = np.asarray(value)
        if arr.size != 1:
            raise ValueError
        f = float(arr.reshape(-1)[0])
        if f != int(f):
            raise ValueError
        return int(f)
    except (TypeError, ValueError):
        raise SaeError(f"SAE {path}: {what} must be one whole number, got {value!r}",
                       path) from None


def _orient_enc(w_enc: np.ndarray, w_dec: np.ndarray) -> np.ndarray:
    """``W_enc`` as ``[d_in, d_sae]``: transposed when stored as ``[d_sae, d_in]``."""
    if (w_enc.ndim == 2 and w_dec.ndim == 2 and w_enc.shape != (w_dec.shape[1], w_dec.shape[0])
            and w_enc.shape == w_dec.shape):
        return w_enc.T
    return w_enc


def _load_sae_lens(folder: Path, layer: int | None) -> Sae:
    cfg_path, weights = folder / "cfg.json", folder / "sae_weights.safetensors"
    if not weights.is_file():
        raise SaeError(f"SAE folder {folder} has cfg.json but no sae_weights.safetensors", folder)
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SaeError(f"cannot read {cfg_path}: {exc}", cfg_path) from None
    if not isinstance(cfg, dict):
        raise SaeError(f"{cfg_path}: expected a JSON object", cfg_path)
    tensors, _ = _read_safetensors(weights)
    _need(tensors, weights, "W_enc", "W_dec", "b_enc", "b_dec")
    arch = str(cfg.get("architecture") or "standard").lower()
    act = str(cfg.get("activation_fn_str") or cfg.get("activation_fn") or "relu").lower()
    kwargs = cfg.get("activation_fn_kwargs") or {}
    k = cfg.get("k", kwargs.get("k") if isinstance(kwargs, dict) else None)
    if arch == "standard" and act == "topk":
        arch = "topk"
    if arch not in ("standard", "topk", "jumprelu"):
        raise SaeError(f"SAE {folder}: architecture {arch!r} is not supported "
                       "(supported: standard, topk, jumprelu)", folder)
    if arch == "standard" and act not in ("relu",):
        raise SaeError(f"SAE {folder}: activation {act!r} is not supported for a standard SAE "
                       "(only relu)", folder)
    norm = str(cfg.get("normalize_activations") or "none")
    if norm != "none":
        raise SaeError(f"SAE {folder}: normalize_activations = {norm!r} is not supported "
                       "(only 'none'; fold the normalisation into the weights first)", folder)
    if cfg.get("reshape_activations", "none") not in ("none", None):
        raise SaeError(f"SAE {folder}: reshape_activations = {cfg['reshape_activations']!r} "
                       "(attention hook_z SAEs) is not supported", folder)
    raw_meta = cfg.get("metadata")
    meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    if layer is None:
        if hook:
            layer = layer_of_hook(str(hook), cfg_path)
        elif cfg.get("hook_layer") is not None:
            layer = _int_of(cfg["hook_layer"], "hook_layer", cfg_path)
    elif hook:
        layer_of_hook(str(hook), cfg_path)          # a non-residual hook is refused even so
    threshold = None
    if arch == "jumprelu":
        if "threshold" in tensors:
            threshold = tensors["threshold"]
        elif "log_threshold" in tensors:
            threshold = np.exp(tensors["log_threshold"].astype(np.float64)).astype(np.float32)
        else:
            _need(tensors, weights, "threshold")
    d_in = cfg.get("d_in")
    if d_in is not None and _int_of(d_in, "d_in", cfg_path) != tensors["W_dec"].shape[-1]:
        raise SaeError(f"SAE {folder}: cfg.json says d_in = {d_in} but W_dec is "
                       f"{tuple(tensors['W_dec'].shape)}", folder)
    return Sae(tensors["W_enc"], tensors["W_dec"], tensors["b_enc"], tensors["b_dec"],
               architecture=arch, k=None if k is None or arch != "topk" else _int_of(k, "k", cfg_path),
               threshold=threshold, layer=layer, hook_name=str(hook) if hook else None,
               apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
               rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)),
               labels=_labels(folder / "labels.json"), path=folder, format="sae_lens")


def _load_plain(path: Path, layer: int | None) -> Sae:
    fmt = "npz" if path.suffix == ".npz" else "safetensors"
    meta: dict[str, str] = {}
    if fmt == "npz":
        tensors = _read_npz(path)
    else:
        tensors, meta = _read_safetensors(path)
    _need(tensors, path, "W_enc", "W_dec", "b_enc", "b_dec")
    k_raw: Any = tensors.get("k", meta.get("k"))
    threshold = tensors.get("threshold")
    arch = "topk" if k_raw is not None else "jumprelu" if threshold is not None else "standard"
    hook = meta.get("hook_name")
    if layer is None:
        if "layer" in tensors:
            layer = _int_of(tensors["layer"], "layer", path)
        elif meta.get("layer") is not None:
            layer = _int_of(meta["layer"], "layer", path)
        elif hook:
            layer = layer_of_hook(hook, path)
    w_dec = tensors["W_dec"]
    return Sae(_orient_enc(tensors["W_enc"], w_dec), w_dec, tensors["b_enc"], tensors["b_dec"],
               architecture=arch, k=None if k_raw is None else _int_of(k_raw, "k", path),
               threshold=threshold, layer=layer, hook_name=hook,
               labels=_labels(path.with_name(path.stem + ".labels.json")), path=path, format=fmt)


def load_sae(path: str | Path, *, layer: int | None = None) -> Sae:
    """Read an SAE from ``path`` (folder or file, see the module doc); ``layer`` overrides
    the layer its hook name gives (and is required when the file names none)."""
    p = Path(path)
    if p.suffix.lower() in _TORCH_SUFFIXES:
        raise SaeError(f"SAE {p} is a torch pickle; the runtime has no torch — convert it to "
                       f"safetensors where torch is installed: {TORCH_CONVERSION}", p)
    if not p.exists():
        raise SaeError(f"SAE {p} does not exist", p)
    if p.is_dir():
        if (p / "cfg.json").is_file():
            sae = _load_sae_lens(p, layer)
        else:
            pts = sorted(q.name for q in p.iterdir() if q.suffix in _TORCH_SUFFIXES)
            hint = (f" (it holds {pts[0]}, a torch pickle — convert it: {TORCH_CONVERSION})"
                    if pts else "")
            raise SaeError(f"SAE folder {p} has no cfg.json (the sae_lens layout is cfg.json + "
                           f"sae_weights.safetensors){hint}", p)
    elif p.suffix.lower() in (".safetensors", ".npz"):
        sae = _load_plain(p, layer)
    else:
        raise SaeError(f"SAE {p}: unknown file type {p.suffix or '(none)'} (an sae_lens "
                       "folder, a .safetensors or a .npz file)", p)
    if layer is not None:
        sae.layer = int(layer)
    return sae
