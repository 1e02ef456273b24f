"""Choosing K by lossy coding length recovers the number of orthogonal subspaces the data came from."""
import numpy as np
import pytest

from scaleclust.cluster.coding_length import choose_k, coding_length
from scaleclust.cluster.spectral import spectral_cluster


def orthogonal_subspaces(k: int, dim: int, ambient: int, per: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`per` unit rows from each of k mutually orthogonal `dim`-dimensional subspaces, plus noise."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((ambient, k * dim)))
    labels = np.repeat(np.arange(k), per)
    coeffs = rng.standard_normal((k * per, dim))
    blocks = basis.reshape(ambient, k, dim)                     # blocks[:, j] spans subspace j
    x = np.einsum("nr,dnr->nd", coeffs, blocks[:, labels])
    x += noise * rng.standard_normal(x.shape)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


@pytest.mark.parametrize("k", [3, 5])
def test_choose_k_recovers_number_of_orthogonal_subspaces(k):
    z, _ = orthogonal_subspaces(k, dim=3, ambient=32, per=80, noise=0.05, seed=k)
    affinity = np.abs(z @ z.T) ** 4
    best, lengths = choose_k(z, range(2, 9), lambda kk: spectral_cluster(affinity, kk, seed=0), eps2=0.1)
    assert best == k, lengths


def test_true_partition_codes_shorter_than_merged_or_split():
    z, labels = orthogonal_subspaces(4, dim=3, ambient=32, per=80, noise=0.05, seed=0)
    merged = np.where(labels == 3, 2, labels)
    split = np.where((labels == 0) & (np.arange(len(labels)) % 2 == 0), 4, labels)
    truth = coding_length(z, labels, 0.1)
    assert truth < coding_length(z, merged, 0.1) and truth < coding_length(z, split, 0.1)
