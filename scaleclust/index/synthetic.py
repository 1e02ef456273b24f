"""Clustered synthetic unit vectors for tests and benchmarks (IVF recall is moot on noise)."""

from __future__ import annotations

import numpy as np

from scaleclust.index.build import unit_float32


def clustered_vectors(
    n: int, d: int, n_clusters: int, noise: float = 1.0, rank: int = 0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors around ``n_clusters`` random unit centres, and each vector's cluster label.

    x = normalise(centre + noise * u) with E|u|^2 = 1, so the cosine to the own centre is about
    1/sqrt(1 + noise^2). u is isotropic in all d dimensions when ``rank`` is 0, else it lies in a
    random ``rank``-dimensional subspace per cluster (low intrinsic dimension, as in real
    embeddings). Generated cluster by cluster in float32, so 1M x 512 takes seconds.
    """
    rng = np.random.default_rng(seed)
    centres = unit_float32(rng.standard_normal((n_clusters, d), dtype=np.float32))
    labels = rng.integers(0, n_clusters, size=n)
    order = np.argsort(labels, kind="stable")
    out = np.empty((n, d), dtype=np.float32)
    bounds = np.searchsorted(labels[order], np.arange(1, n_clusters))
    for c, rows in enumerate(np.split(order, bounds)):
        if rank:
            basis = rng.standard_normal((rank, d), dtype=np.float32) / np.float32(np.sqrt(rank * d))
            u = rng.standard_normal((len(rows), rank), dtype=np.float32) @ basis
        else:
            u = rng.standard_normal((len(rows), d), dtype=np.float32) / np.float32(np.sqrt(d))
        out[rows] = unit_float32(centres[c] + np.float32(noise) * u)
    return out, labels
