"""Sparse autoencoders over the residual stream (knows nothing of LQL statements).

:class:`Sae` (weights, ``encode`` / ``decode``), :func:`load_sae` (the sae_lens folder
layout and plain TopK checkpoints), and the numeric helpers the SAE statements use
(:mod:`lql.sae.metrics`). The formulas, the file layouts and which residual an SAE reads
are documented in the modules and in docs/INTERPRET.md.
"""

from .load import TORCH_CONVERSION, layer_of_hook, load_sae
from .sae import ARCHITECTURES, Sae, SaeError

__all__ = ["Sae", "SaeError", "ARCHITECTURES", "load_sae", "layer_of_hook", "TORCH_CONVERSION"]
