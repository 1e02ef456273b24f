"""Every assigner's output from its per-cluster scores: the cluster, its confidence and the runner-up.

Plain numpy, a batch of rows at a time: memory is O(batch x K) beside the rows whatever their number (a
nightly refit assigns a whole sample of millions of rows at K in the thousands), and the top two come from
two argmax passes rather than a sort of every row's K scores.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

BATCH = 4096  # rows scored at a time


def top_two(score: Callable[[np.ndarray], np.ndarray], x: np.ndarray, temperature: float,
            batch_size: int = BATCH) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cluster int32, confidence float32, second-choice cluster int32) per row of x, where score(rows)
    gives (b, K) scores (logits, cosines): the argmax, its softmax(scores / temperature) probability, and
    the best of the others. Ties go to the lowest index."""
    n = len(x)
    cluster, confidence, second = np.empty(n, np.int32), np.empty(n, np.float32), np.empty(n, np.int32)
    for i in range(0, n, batch_size):
        s = np.array(score(x[i:i + batch_size]), np.float32)  # a copy: the runner-up pass overwrites the best
        s[np.isnan(s)] = -np.inf  # a NaN score never wins (argmax would pick it)
        rows = np.arange(len(s))
        best = s.argmax(axis=1)
        top = s[rows, best]
        cluster[i:i + len(s)] = best
        confidence[i:i + len(s)] = 1.0 / np.exp((s - top[:, None]) / temperature).sum(axis=1)
        s[rows, best] = -np.inf
        runner_up = s.argmax(axis=1)  # every other score -inf: the next slot, never the best itself (k > 1)
        second[i:i + len(s)] = np.where((runner_up == best) & (s.shape[1] > 1), (best + 1) % s.shape[1], runner_up)
    return cluster, confidence, second
