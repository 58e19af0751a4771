"""Relation labels of features: probe labels beat cluster labels.

* probe labels: ``v.feature_labels`` — ``{(layer, feature): label}`` from
  ``feature_labels.json``;
* cluster labels: ``feature_clusters.jsonl`` (one JSON object a line naming a
  layer, a feature and a cluster) resolved through ``relation_clusters.json``'s
  ``labels`` list. Both files are optional.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .memo import PerVindex

if TYPE_CHECKING:
    from ..runtime.view import VindexView

__all__ = ["Labels", "labels_of"]


@dataclass
class Labels:
    probe: dict[tuple[int, int], str] = field(default_factory=dict)
    cluster: dict[tuple[int, int], str] = field(default_factory=dict)
    clusters: dict | None = None            # relation_clusters.json as read

    def get(self, layer: int, feature: int) -> tuple[str | None, str | None]:
        """``(label, source)`` with source ``"probe"`` / ``"cluster"``, or ``(None, None)``."""
        key = (int(layer), int(feature))
        lab = self.probe.get(key)
        if lab is not None:
            return lab, "probe"
        lab = self.cluster.get(key)
        if lab is not None:
            return lab, "cluster"
        return None, None

    def label(self, layer: int, feature: int) -> str | None:
        return self.get(layer, feature)[0]

    def all_labelled(self) -> dict[tuple[int, int], tuple[str, str]]:
        """Every labelled feature → ``(label, source)`` (probe wins)."""
        out = {k: (v, "cluster") for k, v in self.cluster.items()}
        out.update({k: (v, "probe") for k, v in self.probe.items()})
        return out

    def __bool__(self) -> bool:
        return bool(self.probe or self.cluster or self.clusters)


def _cluster_labels(clusters) -> list:
    if isinstance(clusters, dict):
        labs = clusters.get("labels")
        if isinstance(labs, list):
            return labs
    return []


def _read_feature_clusters(path: str, names: list) -> dict[tuple[int, int], str]:
    out: dict[tuple[int, int], str] = {}
    try:
        f = open(path, encoding="utf-8")
    except OSError:
        return out
    with f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(rec, dict):
                continue
            layer, feat = rec.get("layer"), rec.get("feature")
            if not isinstance(layer, int) or not isinstance(feat, int):
                continue
            lab = rec.get("label")
            if not isinstance(lab, str):
                c = rec.get("cluster", rec.get("cluster_id", rec.get("c")))
                lab = names[c] if isinstance(c, int) and 0 <= c < len(names) else None
            if isinstance(lab, str) and lab:
                out[(layer, feat)] = lab
    return out


def _build(view: VindexView) -> Labels:
    probe_raw = getattr(view, "feature_labels", None) or {}
    probe: dict[tuple[int, int], str] = {}
    for k, v in dict(probe_raw).items():
        if isinstance(k, str) and ":" in k:          # raw "layer:feature" keys
            a, b = k.split(":", 1)
            try:
                k = (int(a), int(b))
            except ValueError:
                continue
        if isinstance(k, tuple) and len(k) == 2 and isinstance(v, str):
            probe[(int(k[0]), int(k[1]))] = v
    clusters = getattr(view, "relation_clusters", None)
    cluster: dict[tuple[int, int], str] = {}
    path = getattr(view, "path", None)
    if path is not None:
        fc = os.path.join(os.fspath(path), "feature_clusters.jsonl")
        if os.path.isfile(fc):
            cluster = _read_feature_clusters(fc, _cluster_labels(clusters))
    return Labels(probe, cluster, clusters if clusters else None)


labels_of = PerVindex(_build)
"""``labels_of(view)``: the labels of ``view`` (memoised per vindex object)."""
