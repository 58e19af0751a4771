"""Relation labels of features: probe labels beat cluster labels.

* probe labels: ``v.feature_labels`` — ``{(layer, feature): label}`` from
  ``feature_labels.json`` (keys ``"L27_F9515"``, LARQL's, or the older ``"27:9515"``);
* cluster labels: ``feature_clusters.jsonl`` (one JSON object a line naming a
  layer, a feature and a cluster: LARQL's ``{"l", "f", "c"}`` or ``layer`` /
  ``feature`` / ``cluster``) resolved through ``relation_clusters.json``'s
  ``labels`` list. Both files are optional.

What we write is LARQL's format (:func:`write_labels`), so LARQL reads it: keys
``"L<layer>_F<feature>"`` (larql-lql/src/relations.rs:55-63), records ``{"l","f","c"}``
(larql-vindex/src/extract/build_helpers.rs:283-291) and a ``relation_clusters.json`` with
every field of LARQL's ``ClusterResult`` (clustering/mod.rs:26-33: ``k``, ``centres``,
``labels``, ``counts``, ``top_tokens``, all required — LARQL drops a file lacking one).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..vindex.larql import label_key, parse_label_key
from .memo import PerVindex

if TYPE_CHECKING:
    from ..runtime.view import VindexView

__all__ = ["Labels", "labels_of", "write_labels"]


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
            layer = rec.get("l", rec.get("layer"))
            feat = rec.get("f", rec.get("feature"))
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
        if isinstance(k, str):                       # raw "L27_F9515" / "27:9515" keys
            parsed = parse_label_key(k)
            if parsed is None:
                continue
            k = parsed
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


def write_labels(folder: str | os.PathLike[str], *,
                 probe: dict[tuple[int, int], str] | None = None,
                 assignments: dict[tuple[int, int], int] | None = None,
                 clusters: dict | None = None) -> list[str]:
    """Write label files into a vindex ``folder`` in LARQL's formats; returns the names written.

    ``probe`` → feature_labels.json ``{"L<l>_F<f>": label}``; ``assignments`` →
    feature_clusters.jsonl ``{"l", "f", "c"}`` lines; ``clusters`` → relation_clusters.json,
    which must carry all of ``k, centres, labels, counts, top_tokens`` (LARQL's
    ``ClusterResult``; ``centres`` one hidden-size list per cluster)."""
    from ..errors import ExecutionError
    from ..vindex.format import write_json_atomic
    root = os.fspath(folder)
    written: list[str] = []
    if probe is not None:
        doc = {label_key(l, f): str(lab) for (l, f), lab in sorted(probe.items())}
        write_json_atomic(Path(root) / "feature_labels.json", doc)
        written.append("feature_labels.json")
    if assignments is not None:
        lines = "".join(json.dumps({"l": int(l), "f": int(f), "c": int(c)}) + "\n"
                        for (l, f), c in sorted(assignments.items()))
        tmp = Path(root) / ".feature_clusters.jsonl.tmp"
        tmp.write_text(lines, encoding="utf-8")
        os.replace(tmp, Path(root) / "feature_clusters.jsonl")
        written.append("feature_clusters.jsonl")
    if clusters is not None:
        need = ("k", "centres", "labels", "counts", "top_tokens")
        missing = [k for k in need if k not in clusters]
        if missing:
            raise ExecutionError(f"relation_clusters.json needs {', '.join(need)} (LARQL's "
                                 f"ClusterResult); missing {', '.join(missing)}")
        write_json_atomic(Path(root) / "relation_clusters.json",
                          {k: clusters[k] for k in need} | {k: v for k, v in clusters.items()
                                                            if k not in need})
        written.append("relation_clusters.json")
    return written
