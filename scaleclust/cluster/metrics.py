"""Clustering quality against labels, computed from a contingency table so it streams.

ACC: best one-to-one match of clusters to classes (Hungarian); many-to-one ACC: each cluster votes for
its majority class (the fair score when K differs from the class count); NMI (arithmetic mean
normalisation, as sklearn's default) and ARI.
"""
from __future__ import annotations

from collections import Counter
from typing import Hashable, Iterable

import numpy as np
from scipy.special import comb


class Contingency:
    """Counts of (cluster, label) pairs, updated batch by batch."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[int, Hashable]] = Counter()

    def update(self, clusters: Iterable[int], labels: Iterable[Hashable]) -> None:
        self.counts.update((int(c), lab) for c, lab in zip(clusters, labels) if lab is not None)

    def merge(self, other: "Contingency") -> None:
        self.counts.update(other.counts)

    def matrix(self) -> np.ndarray:
        clusters = sorted({c for c, _ in self.counts})
        labels = sorted({lab for _, lab in self.counts}, key=str)
        ci = {c: i for i, c in enumerate(clusters)}
        li = {lab: j for j, lab in enumerate(labels)}
        table = np.zeros((len(clusters), len(labels)), dtype=np.int64)
        for (c, lab), n in self.counts.items():
            table[ci[c], li[lab]] = n
        return table


def scores(table: np.ndarray) -> dict[str, float]:
    """ACC, many-to-one ACC, NMI and ARI of a clusters x classes contingency table."""
    n = table.sum()
    if n == 0:
        return {}
    from scipy.optimize import linear_sum_assignment  # imported where used: scaleclust/cluster/__init__.py

    rows, cols = linear_sum_assignment(-table)
    a, b = table.sum(axis=1), table.sum(axis=0)
    nz = table > 0
    mi = float((table[nz] / n * np.log(n * table[nz] / np.outer(a, b)[nz])).sum())
    entropy = lambda p: float(-(p[p > 0] / n * np.log(p[p > 0] / n)).sum())  # noqa: E731
    h_mean = (entropy(a) + entropy(b)) / 2
    sum_ij, sum_a, sum_b = comb(table, 2).sum(), comb(a, 2).sum(), comb(b, 2).sum()
    expected = sum_a * sum_b / comb(n, 2)
    denom = (sum_a + sum_b) / 2 - expected
    return {
        "n": int(n),
        "acc": float(table[rows, cols].sum() / n),
        "acc_many_to_one": float(table.max(axis=1).sum() / n),
        "nmi": mi / h_mean if h_mean > 0 else 1.0,
        "ari": float((sum_ij - expected) / denom) if denom != 0 else 1.0,
    }
