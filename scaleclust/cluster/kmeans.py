"""Spherical k-means (faiss) and soft assignment to centroids: the baseline method.

faiss's k-means runs on the GPUs it is given (faiss-gpu; the caller decides how many its process may
use, e.g. scaleclust.index.device.usable_gpus in a Ray task) and on the CPU otherwise: same algorithm
and seed, the assignment step is a flat inner-product search on the device.
"""
from __future__ import annotations

import faiss
import numpy as np

from scaleclust.cluster.choice import top_two


def spherical_kmeans(x: np.ndarray, k: int, niter: int, restarts: int, seed: int,
                     gpus: int = 0) -> tuple[np.ndarray, float]:
    """Cluster L2-normalised rows on the sphere; returns unit centroids (k, d) and the best objective
    (sum of cosine similarities to the assigned centroid) over `restarts` runs; on ``gpus`` GPUs
    (0: the CPU)."""
    if len(x) < k:
        raise ValueError(f"cannot fit k={k} clusters on {len(x)} rows")
    x = np.ascontiguousarray(x, dtype=np.float32)
    km = faiss.Kmeans(x.shape[1], k, niter=niter, nredo=restarts, spherical=True, seed=seed,
                      max_points_per_centroid=max(256, len(x) // k + 1), verbose=False, gpu=gpus or False)
    km.train(x)
    return km.centroids.copy(), float(km.obj[-1])


def soft_assign(x: np.ndarray, centroids: np.ndarray, temperature: float) -> dict[str, np.ndarray]:
    """Nearest and second-nearest centroid by cosine, with confidence = softmax(cos / T) of the first."""
    centroids = np.asarray(centroids, np.float32)
    cluster, confidence, second = top_two(lambda rows: np.asarray(rows, np.float32) @ centroids.T, x, temperature)
    return {"cluster": cluster, "confidence": confidence, "cluster2": second}
