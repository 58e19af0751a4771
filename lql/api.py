"""The Python browse API.

    >>> import lql
    >>> v = lql.open_vindex("smollm2.vindex")
    >>> v.walk("The capital of France is", top=5).rows[0]
    {'layer': 0, 'feature': ..., 'gate': ..., 'top_token': ..., ...}
    >>> v.describe("France", verbosity="verbose")       # a Result, like the CLI's
    >>> v.gate_knn(20, "Paris", top=5)                  # features nearest a text or vector
    >>> q = v.embed("France")                           # the query vector DESCRIBE uses
    >>> v.feature(20, 100)                              # one feature (SELECT ... WHERE layer/feature)

Every method returns the same :class:`~lql.result.Result` the statement
handlers return (they call the same functions in :mod:`lql.browse`), except
:meth:`BrowseView.embed`, which returns the query vector itself. Anything else
(``gate(layer)``, ``down_meta``, ``tokenizer``, ``num_layers`` ...) is the
underlying :class:`lql.vindex.Vindex`'s, reached through the view.
"""

from __future__ import annotations

import os

import numpy as np

from . import ast, browse
from .browse.core import check_layer, entity_query, query_vector, top_by_abs
from .browse.describe import top_positive
from .errors import ExecutionError
from .result import Result

__all__ = ["open_vindex", "BrowseView"]


def _layers(layers):
    """``None`` / ``"ALL"`` / int / ``(lo, hi)`` / ``"14-27"`` / iterable → a layer spec."""
    if layers is None or (isinstance(layers, str) and layers.strip().upper() == "ALL"):
        return None
    if isinstance(layers, str):
        a, _, b = layers.partition("-")
        return ast.Range(int(a), int(b or a))
    if isinstance(layers, int):
        return ast.Range(layers, layers)
    if isinstance(layers, tuple) and len(layers) == 2:
        return ast.Range(int(layers[0]), int(layers[1]))
    return layers


class BrowseView:
    """A vindex opened for browsing from Python (see the module docstring)."""

    def __init__(self, vindex):
        self.vindex = vindex

    # the vindex's own attributes, listed one by one (`embed` below takes text, not ids)
    path = property(lambda self: self.vindex.path)
    index = property(lambda self: self.vindex.index)
    model = property(lambda self: self.vindex.model)
    family = property(lambda self: self.vindex.family)
    dtype = property(lambda self: self.vindex.dtype)
    level = property(lambda self: self.vindex.level)
    source = property(lambda self: self.vindex.source)
    num_layers = property(lambda self: self.vindex.num_layers)
    layers = property(lambda self: self.vindex.layers)
    hidden_size = property(lambda self: self.vindex.hidden_size)
    vocab_size = property(lambda self: self.vindex.vocab_size)
    embed_scale = property(lambda self: self.vindex.embed_scale)
    model_config = property(lambda self: self.vindex.model_config)
    layer_bands = property(lambda self: self.vindex.layer_bands)
    weights = property(lambda self: self.vindex.weights)
    embeddings = property(lambda self: self.vindex.embeddings)
    down_meta = property(lambda self: self.vindex.down_meta)
    tokenizer = property(lambda self: self.vindex.tokenizer)
    chat_template = property(lambda self: self.vindex.chat_template)
    tokenizer_config = property(lambda self: self.vindex.tokenizer_config)
    feature_labels = property(lambda self: self.vindex.feature_labels)
    relation_clusters = property(lambda self: self.vindex.relation_clusters)

    def num_features(self, layer: int) -> int:
        return int(self.vindex.num_features(layer))

    def has_layer(self, layer: int) -> bool:
        return bool(self.vindex.has_layer(layer))

    def gate(self, layer: int) -> np.ndarray:
        return self.vindex.gate(layer)

    def token_text(self, token_id: int) -> str:
        return str(self.vindex.token_text(token_id))

    def __repr__(self) -> str:
        return f"<BrowseView {self.vindex!r}>"

    # ------------------------------------------------------------ statements
    def walk(self, prompt: str, *, top: int | None = None, layers=None, mode=None,
             experts: bool = False) -> Result:
        """``WALK prompt [TOP top] [LAYERS layers] [MODE mode] [EXPERTS]``."""
        return browse.walk(self.vindex, prompt, top=top, layers=_layers(layers),
                           mode=mode, experts=experts)  # mode: a name or the enum (keyword_of)

    def explain_walk(self, prompt: str, *, top: int | None = None, layers=None,
                     verbose: bool = False, experts: bool = False) -> Result:
        return browse.walk(self.vindex, prompt, top=top, layers=_layers(layers), explain=True,
                           verbose=verbose, experts=experts)

    def describe(self, entity: str, *, band=None, layer: int | None = None,
                 relations_only: bool = False, verbosity=None, via=None,
                 experts: bool = False) -> Result:
        """``DESCRIBE entity [band] [AT LAYER layer] [RELATIONS ONLY] [verbosity] [VIA via] [EXPERTS]``."""
        return browse.describe(self.vindex, entity, band=band, layer=layer,
                               relations_only=relations_only,
                               verbosity=verbosity, via=via, experts=experts)

    def select(self, text: str) -> Result:
        """Run one ``SELECT ...`` statement given as LQL text."""
        from .parser import parse
        stmts = parse(text)
        if len(stmts) != 1 or not isinstance(stmts[0], ast.Select):
            raise ExecutionError("select() takes exactly one SELECT statement")
        s = stmts[0]
        return browse.select(self.vindex, s.source, fields=s.fields, nearest=s.nearest,
                             where=s.where, order_by=s.order_by, limit=s.limit)

    def feature(self, layer: int, feature: int) -> Result:
        """``SELECT * FROM FEATURES WHERE layer = L AND feature = F`` (one row)."""
        from .ast import Condition, SelectSource
        return browse.select(self.vindex, SelectSource.FEATURES,
                             where=(Condition("layer", "=", int(layer)),
                                    Condition("feature", "=", int(feature))))

    def stats(self) -> Result:
        return browse.stats(self.vindex)

    # ------------------------------------------------------------ vectors
    def embed(self, text: str, *, as_prompt: bool = False) -> np.ndarray:
        """The query vector for ``text``: DESCRIBE's (mean of the tokens of ``" " + text``,
        × embed_scale) or, with ``as_prompt``, WALK's (last token × embed_scale)."""
        if as_prompt:
            return query_vector(self.vindex, text)[0]
        q, _ids = entity_query(self.vindex, text)
        if q is None:
            raise ExecutionError(f"{text!r} does not tokenize")
        return q

    def gate_knn(self, layer: int, query, *, top: int = 10, signed: bool = False) -> Result:
        """The ``top`` features of ``layer`` with the largest ``|gate · query|`` (or, with
        ``signed``, the largest positive scores). ``query``: a text (its :meth:`embed`)
        or a vector of hidden size. Rows: ``layer, feature, gate, top_token, relation``."""
        layer = check_layer(self.vindex, int(layer))
        q = self.embed(query) if isinstance(query, str) else np.asarray(query, dtype=np.float32)
        if q.shape != (int(self.vindex.hidden_size),):
            raise ExecutionError(f"query must have shape ({self.vindex.hidden_size},), "
                                 f"got {tuple(q.shape)}")
        scores = browse.core.gate_scores(self.vindex, layer, q)
        idx = top_positive(scores, top) if signed else top_by_abs(scores, top)
        rows = []
        for f in idx.tolist():
            r = browse.info.feature_row(self.vindex, layer, f)
            rows.append({"layer": layer, "feature": f, "gate": round(float(scores[f]), 6),
                         "top_token": r["target"], "relation": r["relation"],
                         "down_tokens": r["down_tokens"]})
        return Result.table("GATE KNN", ["layer", "feature", "gate", "top_token", "relation",
                                         "down_tokens"], rows, layer=layer, top=top)


def open_vindex(path: str | os.PathLike) -> BrowseView:
    """Open a vindex for browsing (``lql.open_vindex``)."""
    from .vindex import open_vindex as _open
    return BrowseView(_open(path))
