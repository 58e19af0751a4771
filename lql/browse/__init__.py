"""Browsing a vindex without a forward pass: WALK, DESCRIBE, SELECT, SHOW, STATS.

Pure computations over a ``Vindex`` (or an overlay view with the same
interface) that return :class:`~lql.result.Result` objects. The statement
handlers (``lql/exec/browse.py``) and the Python API (``lql/api.py``) both call
these functions, so the CLI, the REPL and Python always agree.
"""

from __future__ import annotations

from .describe import describe, describe_edges
from .info import show_entities, show_features, show_layers, show_relations, stats
from .select import select
from .walk import walk

__all__ = ["walk", "describe", "describe_edges", "select", "stats", "show_layers",
           "show_features", "show_relations", "show_entities"]
