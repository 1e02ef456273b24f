"""Choosing the number of clusters by lossy coding length (Ma et al. 2007; CPP's K estimate)."""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np


def coding_length(z: np.ndarray, labels: np.ndarray, eps2: float) -> float:
    """Bits (nats) to code rows z (n, d) cluster by cluster, plus the labels themselves:
    sum_j (m_j + d)/2 logdet(I + d/(m_j eps2) Z_j^T Z_j) + m_j log(n/m_j)."""
    z = np.asarray(z, np.float64)
    n, d = z.shape
    total = 0.0
    for j in np.unique(labels):
        zj = z[labels == j]
        m = len(zj)
        gram = zj.T @ zj if d <= m else zj @ zj.T
        _, logdet = np.linalg.slogdet(np.eye(len(gram)) + d / (m * eps2) * gram)
        total += (m + d) / 2 * logdet + m * np.log(n / m)
    return float(total)


def choose_k(z: np.ndarray, candidates: Iterable[int], cluster: Callable[[int], np.ndarray],
             eps2: float) -> tuple[int, dict[int, float]]:
    """The candidate K whose clustering (`cluster(K)` -> labels of z) codes z in the fewest nats;
    also returns every candidate's coding length."""
    lengths = {k: coding_length(z, cluster(k), eps2) for k in candidates}
    return min(lengths, key=lengths.get), lengths
