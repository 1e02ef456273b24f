"""Choosing the number of clusters without labels and before any training (`cluster.k: auto`).

The rule is the mean silhouette (Rousseeuw 1987) of k-means partitions of one sample, a standard internal
criterion (scikit-learn's, R's cluster package): each row's (b - a) / max(a, b), where a is its mean distance
to the rows of its own cluster and b to those of the nearest other cluster. For each candidate k, the
sample's rows (L2-normalised, centred, projected on their top DIMS principal components so that distances
are not drowned by the embedding's many low-variance dimensions) are clustered by k-means (scikit-learn,
RESTARTS restarts) and the silhouette of that partition is measured on SILHOUETTE_ROWS of them; the
candidate with the highest wins. Too few clusters put distinct groups in one cluster (a grows); too many
cut groups whose rows then lie as close to the neighbouring cluster as to their own (b shrinks).

Chosen on three embedded labelled sets and their 4-, 7- and 20-class variants (docs/measurements.md):
stability of k-means across halves of the sample, raw or after neighbour smoothing, prediction strength,
the eigengap of the kNN graph's Laplacian, modularity, Louvain communities and the silhouette after
neighbour smoothing were no closer to the true class count on more of them. It is not close enough on
all: 20 of 30 runs within 30%, undershooting the 8x8 digits and the 20-class join. The silhouette
favours k = 2 on these embeddings (a cloud with one long axis splits in two cleanly), which is why the
default candidates start at 3.
"""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

ROWS = 5000             # the sample the number of clusters is chosen on (all rows when there are fewer)
DIMS = 64               # principal components the rows are clustered in
RESTARTS = 3            # k-means restarts per candidate; the lowest objective wins
SILHOUETTE_ROWS = 3000  # rows whose silhouette is averaged (its cost is quadratic in them)
MIN_ROWS_PER_CLUSTER = 10  # a candidate needs at least this many sampled rows per cluster
CRITERION = f"silhouette of k-means partitions in the sample's top {DIMS} principal components"


def principal_components(x: np.ndarray, dims: int = DIMS) -> np.ndarray:
    """Rows L2-normalised, centred and projected on their top `dims` principal components (float32)."""
    x = np.asarray(x, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    x -= x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return np.ascontiguousarray(x @ vt[:dims].T, dtype=np.float32)


def silhouette(p: np.ndarray, k: int, seed: int, rows: np.ndarray) -> float:
    """Mean silhouette, over `rows`, of the k-means partition (k-means++ seeding, whose restarts rarely miss
    a small group) of all of `p`."""
    from sklearn.cluster import KMeans  # imported where used: scaleclust/cluster/__init__.py
    from sklearn.metrics import silhouette_score

    labels = KMeans(k, n_init=RESTARTS, random_state=seed).fit_predict(p)
    if len(np.unique(labels[rows])) < 2:
        return -1.0  # every scored row in one cluster: no partition to score
    return float(silhouette_score(p[rows], labels[rows]))


def usable(candidates: Iterable[int], rows: int) -> list[int]:
    """The candidates a sample of `rows` rows can score: at least MIN_ROWS_PER_CLUSTER rows per cluster."""
    return sorted(k for k in set(candidates) if 2 <= k <= rows // MIN_ROWS_PER_CLUSTER)


def choose_k(x: np.ndarray, candidates: Iterable[int], seed: int = 0) -> dict[str, Any]:
    """The candidate whose k-means partition of the rows `x` (n, d) has the highest silhouette. Returns
    {"k", "criterion", "values": {k: silhouette}, "rows"} for model.json. Raises ValueError when no
    candidate fits the rows."""
    ks = usable(candidates, len(x))
    if not ks:
        raise ValueError(f"no candidate k fits {len(x)} rows (each needs {MIN_ROWS_PER_CLUSTER} rows per cluster)")
    p = principal_components(x)
    scored = np.random.default_rng(seed).choice(len(p), size=min(SILHOUETTE_ROWS, len(p)), replace=False)
    values = {k: round(silhouette(p, k, seed, scored), 4) for k in ks}
    best = max(values, key=lambda k: (values[k], -k))  # ties: the fewer clusters
    return {"k": int(best), "criterion": CRITERION, "values": {str(k): v for k, v in values.items()},
            "rows": int(len(x))}
