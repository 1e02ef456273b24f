"""Drift of new rows against a fitted clustering, and novelty (rows far from every cluster); numpy only.

Novelty is calibrated per cluster on the rows the clusters were fitted on: a cluster's prototype is the
normalised mean of its rows, and it accepts a row whose cosine to the prototype is at least the
`quantile` of its own rows' cosines (0.01: all but the farthest 1%). A row that no cluster accepts is
novel. This adapts to each encoder's scale of cosines (a random-weight model puts everything above 0.99,
CLIP spreads classes over 0.2-0.9), where a fixed cosine cut-off would not.

The drift score is the total variation distance between the new rows' cluster shares and the fitted
shares, plus the share of novel rows: 0 when new data looks like old data, up to 2. A cluster grew
when its share of the new rows is `growth` times its fitted share; the largest such excess of share
(grown_excess) tells of a concept an old cluster absorbed, which the novelty test cannot see.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Novelty:
    ids: np.ndarray          # (k,) cluster ids
    prototypes: np.ndarray   # (k, d) unit rows
    thresholds: np.ndarray   # (k,) cosine each cluster needs to accept a row

    def novel(self, x: np.ndarray) -> np.ndarray:
        """Boolean mask of rows of x that no cluster accepts."""
        sims = np.asarray(x, np.float32) @ self.prototypes.T
        return (sims - self.thresholds).max(axis=1) < 0

    def to_bytes(self) -> bytes:
        sink = io.BytesIO()
        np.savez(sink, ids=self.ids, prototypes=self.prototypes, thresholds=self.thresholds)
        return sink.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "Novelty":
        with np.load(io.BytesIO(data)) as npz:
            return cls(npz["ids"], npz["prototypes"], npz["thresholds"])


def calibrate(x: np.ndarray, clusters: np.ndarray, ids: np.ndarray, quantile: float) -> Novelty:
    """Prototypes and acceptance thresholds of each cluster id from rows x with their cluster ids."""
    x = np.asarray(x, np.float32)
    protos = np.zeros((len(ids), x.shape[1]), np.float32)
    thresholds = np.full(len(ids), np.inf, np.float32)  # a cluster without rows accepts nothing
    for slot, cid in enumerate(ids):
        rows = x[clusters == cid]
        if len(rows) == 0:
            continue
        mean = rows.mean(axis=0)
        protos[slot] = mean / max(float(np.linalg.norm(mean)), 1e-12)
        thresholds[slot] = np.quantile(rows @ protos[slot], quantile)
    return Novelty(np.asarray(ids, np.int32), protos, thresholds)


@dataclass
class DriftCounts:
    """What the new rows of one or more shards contribute: rows per cluster id, low-confidence and
    novel rows, and a few novel keys as examples."""

    rows: int = 0
    low_confidence: int = 0
    novel: int = 0
    per_cluster: dict[int, int] = field(default_factory=dict)
    novel_per_cluster: dict[int, int] = field(default_factory=dict)
    novel_examples: list[str] = field(default_factory=list)

    def add(self, clusters: np.ndarray, confidence: np.ndarray, novel: np.ndarray, keys: list[str],
            low: float, examples: int) -> None:
        self.rows += len(clusters)
        self.low_confidence += int((confidence < low).sum())
        self.novel += int(novel.sum())
        for cid, n in zip(*np.unique(clusters, return_counts=True)):
            self.per_cluster[int(cid)] = self.per_cluster.get(int(cid), 0) + int(n)
        for cid, n in zip(*np.unique(clusters[novel], return_counts=True)):
            self.novel_per_cluster[int(cid)] = self.novel_per_cluster.get(int(cid), 0) + int(n)
        self.novel_examples += [keys[i] for i in np.flatnonzero(novel)[: max(0, examples - len(self.novel_examples))]]

    def merge(self, other: "DriftCounts", examples: int) -> None:
        self.rows += other.rows
        self.low_confidence += other.low_confidence
        self.novel += other.novel
        for mine, theirs in ((self.per_cluster, other.per_cluster), (self.novel_per_cluster, other.novel_per_cluster)):
            for cid, n in theirs.items():
                mine[cid] = mine.get(cid, 0) + n
        self.novel_examples = (self.novel_examples + other.novel_examples)[:examples]


def report(fitted: dict[int, int], counts: DriftCounts, growth: float, min_expected: float,
           warn: float, refit: float) -> dict:
    """The drift report of new rows against the fitted cluster sizes (id -> rows)."""
    total = max(sum(fitted.values()), 1)
    n = max(counts.rows, 1)
    ids = sorted(set(fitted) | set(counts.per_cluster))
    clusters, grown, shrunk = [], [], []
    for cid in ids:
        p, q = fitted.get(cid, 0) / total, counts.per_cluster.get(cid, 0) / n
        ratio = q / p if p > 0 else None
        clusters.append({"cluster": cid, "fitted_share": round(p, 5), "new_share": round(q, 5),
                         "new_rows": counts.per_cluster.get(cid, 0), "ratio": None if ratio is None else round(ratio, 3),
                         "novel_rows": counts.novel_per_cluster.get(cid, 0)})
        if p * n >= min_expected or q * n >= min_expected:
            if ratio is None or ratio >= growth:
                grown.append(cid)
            elif ratio <= 1 / growth:
                shrunk.append(cid)
    tv = 0.5 * sum(abs(c["new_share"] - c["fitted_share"]) for c in clusters)
    excess = max((c["new_share"] - c["fitted_share"] for c in clusters if c["cluster"] in grown), default=0.0)
    novel_share = counts.novel / n
    score = tv + novel_share
    return {
        "new_rows": counts.rows,
        "low_confidence_share": round(counts.low_confidence / n, 5),
        "novel_rows": counts.novel,
        "novel_share": round(novel_share, 5),
        "novel_examples": counts.novel_examples,
        "total_variation": round(tv, 5),
        "score": round(score, 5),
        "status": "refit" if score >= refit else "warn" if score >= warn else "ok",
        "thresholds": {"warn": warn, "refit": refit, "growth": growth},
        "grown": grown,
        "grown_excess": round(excess, 5),
        "shrunk": shrunk,
        "clusters": clusters,
    }
