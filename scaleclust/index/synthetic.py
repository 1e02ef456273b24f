"""Clustered synthetic unit vectors for tests and benchmarks (IVF recall is meaningless on noise)."""

from __future__ import annotations

import numpy as np

from scaleclust.index.build import unit_float32


def clustered_vectors(
    n: int, d: int, n_clusters: int, noise: float = 1.0, seed: int = 0, chunk: int = 1 << 16
) -> tuple[np.ndarray, np.ndarray]:
    """n unit vectors around ``n_clusters`` random unit centres, and each vector's cluster label.

    x = normalise(centre + noise * g / sqrt(d)), g ~ N(0, I_d): the expected cosine to the own
    centre is ~1/sqrt(1 + noise^2). Generated in float32 chunks so 1M x 512 takes seconds.
    """
    rng = np.random.default_rng(seed)
    centres = unit_float32(rng.standard_normal((n_clusters, d), dtype=np.float32))
    labels = rng.integers(0, n_clusters, size=n)
    out = np.empty((n, d), dtype=np.float32)
    scale = np.float32(noise / np.sqrt(d))
    for start in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - start), d), dtype=np.float32)
        block *= scale
        block += centres[labels[start:start + chunk]]
        out[start:start + chunk] = unit_float32(block)
    return out, labels
