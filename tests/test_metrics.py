"""Streaming metrics from a contingency table agree with sklearn and scipy on the same labels."""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, confusion_matrix, normalized_mutual_info_score

from scaleclust.cluster.metrics import Contingency, scores


def test_scores_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 2000)
    clusters = np.where(rng.random(2000) < 0.7, labels, rng.integers(0, 7, 2000))
    table = Contingency()
    for part in np.array_split(np.arange(2000), 7):  # streamed in pieces
        piece = Contingency()
        piece.update(clusters[part], [str(x) for x in labels[part]])
        table.merge(piece)
    got = scores(table.matrix())
    cm = confusion_matrix(labels, clusters)
    rows, cols = linear_sum_assignment(-cm)
    assert got["n"] == 2000
    assert np.isclose(got["acc"], cm[rows, cols].sum() / 2000)
    assert np.isclose(got["nmi"], normalized_mutual_info_score(labels, clusters))
    assert np.isclose(got["ari"], adjusted_rand_score(labels, clusters))
    assert got["acc_many_to_one"] >= got["acc"]


def test_unlabelled_rows_are_ignored() -> None:
    table = Contingency()
    table.update([0, 1, 1], ["a", None, "b"])
    assert table.matrix().sum() == 2
