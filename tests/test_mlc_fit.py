"""MLC end to end on synthetic clusters: training makes them separable, and the out-of-sample
subspace assignment reproduces the in-batch spectral clustering."""
from typing import Iterator

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from scaleclust.cluster.local_fit import fit
from scaleclust.cluster.metrics import scores
from scaleclust.cluster.mlc import MLC, cluster_sample, fit_assigner
from scaleclust.cluster.settings import MLCConfig

K = 5
CONFIG = MLCConfig(hidden=128, out_dim=16, lr=1e-3, batch_size=250, steps=150, warmup_steps=20)


def noisy_blobs(per: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """K noisy directions in 32-d, on the sphere; noisy enough that an untrained head scrambles them."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((K, 32))
    labels = np.repeat(np.arange(K), per)
    x = centers[labels] + 1.2 * rng.standard_normal((K * per, 32))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def acc(pred: np.ndarray, labels: np.ndarray) -> float:
    return scores(np.histogram2d(pred, labels, bins=(K, K))[0])["acc"]


@pytest.fixture(scope="module")
def trained() -> Iterator[tuple[torch.nn.Module, np.ndarray, np.ndarray]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: extra threads only contend with the rest of the machine
    x, labels = noisy_blobs(per=100, seed=0)          # rows 0..249 and 250..499 are both balanced halves
    order = np.random.default_rng(1).permutation(len(x))
    x, labels = x[order], labels[order]
    yield fit(torch.from_numpy(x[:250]), MLC(CONFIG), seed=0), x, labels
    torch.set_num_threads(threads)


def test_training_separates_clusters_an_untrained_head_cannot(trained):
    head, x, labels = trained
    untrained = MLC(CONFIG).head(x.shape[1])
    torch.manual_seed(0)
    assert acc(cluster_sample(untrained, x[:250], K, CONFIG, seed=0), labels[:250]) < 0.8
    assert acc(cluster_sample(head, x[:250], K, CONFIG, seed=0), labels[:250]) > 0.9


def test_subspace_assignment_matches_spectral_in_and_out_of_sample(trained):
    head, x, labels = trained
    assigner, spectral = fit_assigner(head, x[:250], K, CONFIG, seed=0)
    cluster, confidence, second = assigner.assign(x[:250])
    assert adjusted_rand_score(spectral, cluster) > 0.9
    assert cluster.dtype == np.int32 and confidence.dtype == np.float32 and second.dtype == np.int32
    assert bool(((confidence > 0) & (confidence <= 1)).all()) and bool((second != cluster).all())
    held_out, _, _ = assigner.assign(x[250:])          # rows the spectral step never saw
    spectral_held_out = cluster_sample(head, x[250:], K, CONFIG, seed=0)
    assert adjusted_rand_score(spectral_held_out, held_out) > 0.9
    assert acc(held_out, labels[250:]) > acc(spectral_held_out, labels[250:]) - 0.02
