"""Out-of-sample assignment by nearest subspace: one low-rank basis per cluster, fitted on a sample.

Spectral clustering needs all pairs of a sample; the bases carry what it found to every other row at
O(K d r) per row, so the assign stage streams any number of rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scaleclust.cluster.choice import top_two


@dataclass(frozen=True)
class SubspaceAssigner:
    """bases (K, d, r): orthonormal columns spanning each cluster's features."""

    bases: np.ndarray
    temperature: float = 0.05

    def scores(self, feats: np.ndarray) -> np.ndarray:
        """Energy of each (unit) row captured by each cluster's subspace, ||U_k^T x||^2: (n, K) in [0, 1]."""
        proj = np.einsum("nd,kdr->nkr", np.asarray(feats, np.float32), self.bases)
        return np.square(proj).sum(-1)

    def assign(self, feats: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cluster int32, confidence float32, second-choice cluster int32) of each row (choice.top_two).

        Confidence is softmax(scores / temperature) at the chosen cluster, as for k-means centroids.
        """
        return top_two(self.scores, feats, self.temperature)


def fit_subspaces(feats: np.ndarray, labels: np.ndarray, k: int, rank: int,
                  temperature: float = 0.05) -> SubspaceAssigner:
    """Top-`rank` right singular vectors of each cluster's rows (uncentred: features live on the
    sphere and MLC makes clusters linear subspaces). An empty cluster gets a zero basis (never chosen)."""
    feats = np.asarray(feats, np.float32)
    bases = np.zeros((k, feats.shape[1], rank), np.float32)
    for j in range(k):
        members = feats[labels == j]
        if len(members):
            _, _, vt = np.linalg.svd(members, full_matrices=False)
            r = min(rank, len(vt))
            bases[j, :, :r] = vt[:r].T
    return SubspaceAssigner(bases, temperature)
