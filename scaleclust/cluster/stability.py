"""Choosing the number of clusters by stability across subsamples (Ben-Hur et al. 2002; Lange et al. 2004).

A K that matches the data's structure is found again from different rows: cluster two disjoint halves
of a sample separately, label every row of the sample with both, and measure how well the two labellings
agree (adjusted Rand index, which is 0 for chance at any K). Too small a K merges groups in ways that
change from half to half; too large a K splits groups at arbitrary places. Label-free and cheap: k-means
(k-means++ seeding, whose restarts rarely stop in a poor local optimum that would read as instability) on
L2-normalised features of a few thousand rows, no n x n matrix.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np


def _normalised(features: np.ndarray) -> np.ndarray:
    x = np.asarray(features, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def stability(features: np.ndarray, k: int, pairs: int = 3, seed: int = 0, restarts: int = 3) -> float:
    """Mean adjusted Rand index, over `pairs` random splits of the rows into two halves, between the
    labellings of all rows by the k-means centroids fitted on either half."""
    from sklearn.cluster import KMeans  # imported where used: scaleclust/cluster/__init__.py
    from sklearn.metrics import adjusted_rand_score

    x = _normalised(features)
    rng = np.random.default_rng([seed, k])
    scores = []
    for pair in range(pairs):
        order = rng.permutation(len(x))
        halves = order[: len(x) // 2], order[len(x) // 2:]
        labels = []
        for side, rows in enumerate(halves):
            model = KMeans(k, n_init=restarts, random_state=int(rng.integers(2**31)) + side).fit(x[rows])
            labels.append(model.predict(x))
        scores.append(adjusted_rand_score(labels[0], labels[1]))
    return float(np.mean(scores))


def choose_k_by_stability(features: np.ndarray, candidates: Iterable[int], pairs: int = 3, seed: int = 0,
                          tolerance: float = 0.02) -> tuple[int, dict[int, float]]:
    """The largest candidate K whose stability is within `tolerance` of the best; also returns every
    candidate's stability. Largest, because merging groups that lie close together can be as stable as
    the true partition (a coarser level of the same hierarchy), while splitting one is not."""
    scores = {int(k): stability(features, int(k), pairs, seed) for k in sorted(candidates)}
    best = max(scores.values())
    return max(k for k, score in scores.items() if score >= best - tolerance), scores
