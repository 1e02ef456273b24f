"""Spectral clustering of a dense affinity matrix (the reference assignment of MLC/CPP on one sample)."""
from __future__ import annotations

import numpy as np
from scipy.sparse.linalg import eigsh
from sklearn.cluster import KMeans


def spectral_embedding(affinity: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Top-k eigenvectors of D^-1/2 A D^-1/2, rows normalised (Ng, Jordan & Weiss): (n, k)."""
    a = np.asarray(affinity, dtype=np.float64)
    inv_sqrt = 1.0 / np.sqrt(np.maximum(a.sum(1), 1e-12))
    normalized = a * inv_sqrt[:, None] * inv_sqrt[None, :]
    v0 = np.random.default_rng(seed).standard_normal(len(a))
    _, vectors = eigsh(normalized, k=k, which="LA", v0=v0)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def spectral_cluster(affinity: np.ndarray, k: int, seed: int, restarts: int = 10) -> np.ndarray:
    """Labels (n,) int32 in [0, k) from a symmetric non-negative affinity (n, n)."""
    embedding = spectral_embedding(affinity, k, seed)
    return KMeans(k, n_init=restarts, random_state=seed).fit_predict(embedding).astype(np.int32)
