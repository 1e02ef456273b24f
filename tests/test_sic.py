"""SIC's semantic pseudo-labels: hand-computed centres, and labels that follow planted semantic centres."""
from __future__ import annotations

import numpy as np
import torch

from scaleclust.cluster.sic import image_centres, pseudo_labels, semantic_centres, semantic_labels


def test_image_centres_average_each_clusters_top_rows() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 2.0]])
    logits = torch.tensor([[5.0, 0.0], [0.0, 5.0], [4.0, 1.0], [1.0, 4.0]])
    centres = image_centres(x, logits, keep=1.0)            # n/K = 2 rows per cluster
    np.testing.assert_allclose(centres[0].numpy(), np.array([2.0, 1.0]) / np.sqrt(5), rtol=1e-6)
    np.testing.assert_allclose(centres[1].numpy(), [0.0, 1.0], atol=1e-6)


def test_semantic_centres_average_the_nearest_nouns() -> None:
    vectors = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    got = semantic_centres(centres, vectors, nearest=2)
    np.testing.assert_allclose(got[0].numpy(), np.array([1.8, 0.6]) / np.hypot(1.8, 0.6), rtol=1e-6)
    np.testing.assert_allclose(got[1].numpy(), np.array([0.8, 1.6]) / np.hypot(0.8, 1.6), rtol=1e-6)
    assert semantic_labels(torch.tensor([[2.0, 0.1], [0.1, 3.0]]), got).tolist() == [0, 1]


def test_pseudo_labels_follow_planted_semantic_centres() -> None:
    rng = np.random.default_rng(0)
    d, k = 32, 4
    planted = np.linalg.qr(rng.normal(size=(d, k)))[0].T                     # k orthonormal concepts
    nouns = planted.repeat(10, 0) + rng.normal(size=(k * 10, d)) * 0.05      # 10 nouns near each concept
    labels = np.repeat(np.arange(k), 50)
    x = planted[labels] + rng.normal(size=(len(labels), d)) * 0.15
    logits = torch.from_numpy(x @ planted.T * 5 + rng.normal(size=(len(labels), k)) * 2)  # a noisy head
    got = pseudo_labels(torch.from_numpy(x), logits, torch.from_numpy(nouns), keep=0.9, nearest=5)
    assert (got.numpy() == labels).mean() > 0.98
