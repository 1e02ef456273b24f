"""Spectral clustering (Ng, Jordan & Weiss) of a symmetric non-negative affinity, dense or sparse.

A dense (n, n) affinity suits a few thousand rows; beyond that pass a scipy.sparse matrix (a kNN
graph): the eigen-solve then costs O(edges) memory, never n x n. One solve for the largest K wanted
serves every smaller K: the leading eigenvectors of a fixed matrix do not depend on how many are asked
for, so `SpectralBasis.labels(k)` reuses the first k columns.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import eigsh

Affinity = np.ndarray | sp.spmatrix | sp.sparray
TOL = 1e-6  # eigenpair residual: far below what moves a k-means label, and Lanczos converges much sooner


def normalized(affinity: Affinity) -> np.ndarray | sp.csr_matrix:
    """D^-1/2 A D^-1/2 in float64, sparse when A is."""
    if sp.issparse(affinity):
        a = sp.csr_matrix(affinity, dtype=np.float64)
        inv_sqrt = 1.0 / np.sqrt(np.maximum(np.asarray(a.sum(1)).ravel(), 1e-12))
        scale = sp.diags(inv_sqrt)
        return sp.csr_matrix(scale @ a @ scale)
    a = np.asarray(affinity, dtype=np.float64)
    inv_sqrt = 1.0 / np.sqrt(np.maximum(a.sum(1), 1e-12))
    return a * inv_sqrt[:, None] * inv_sqrt[None, :]


@dataclass(frozen=True)
class SpectralBasis:
    """The top `k_max` eigenvectors (n, k_max) of the normalised affinity, largest eigenvalue first."""

    vectors: np.ndarray

    @classmethod
    def of(cls, affinity: Affinity, k_max: int, seed: int) -> SpectralBasis:
        """One eigen-solve (Lanczos, scipy eigsh) for up to k_max clusters."""
        n = affinity.shape[0]
        if not 1 <= k_max < n:
            raise ValueError(f"k_max must lie in [1, {n}) for {n} rows, not {k_max}")
        v0 = np.random.default_rng(seed).standard_normal(n)
        values, vectors = eigsh(normalized(affinity), k=k_max, which="LA", v0=v0, tol=TOL)
        return cls(vectors[:, np.argsort(-values)])

    def embedding(self, k: int) -> np.ndarray:
        """The first k eigenvectors, rows normalised: (n, k)."""
        if not 1 <= k <= self.vectors.shape[1]:
            raise ValueError(f"k must lie in [1, {self.vectors.shape[1]}] (the basis's k_max), not {k}")
        head = self.vectors[:, :k]
        return head / np.maximum(np.linalg.norm(head, axis=1, keepdims=True), 1e-12)

    def labels(self, k: int, seed: int, restarts: int = 10) -> np.ndarray:
        """Labels (n,) int32 in [0, k): k-means of the k-dimensional spectral embedding."""
        from sklearn.cluster import KMeans  # imported where used: scaleclust/cluster/__init__.py

        return KMeans(k, n_init=restarts, random_state=seed).fit_predict(self.embedding(k)).astype(np.int32)


def spectral_embedding(affinity: Affinity, k: int, seed: int) -> np.ndarray:
    """Top-k eigenvectors of D^-1/2 A D^-1/2, rows normalised: (n, k)."""
    return SpectralBasis.of(affinity, k, seed).embedding(k)


def spectral_cluster(affinity: Affinity, k: int, seed: int, restarts: int = 10) -> np.ndarray:
    """Labels (n,) int32 in [0, k) from a symmetric non-negative affinity (n, n), dense or sparse."""
    return SpectralBasis.of(affinity, k, seed).labels(k, seed, restarts)
