"""Choosing K by stability across halves of the rows recovers the number of planted clusters, whether it is
the smallest, a middle or the largest candidate; a split is unstable, an equally stable merge loses."""
import numpy as np
import pytest

from scaleclust.cluster.stability import choose_k_by_stability, stability


def planted(k: int, n: int, dim: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n unit rows around k random unit centres (Gaussian noise of std `spread` per coordinate)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(k, size=n)
    x = centres[labels] + spread * rng.standard_normal((n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


@pytest.mark.parametrize("k", [4, 7, 12])
def test_chooses_the_planted_k(k: int) -> None:
    x, _ = planted(k, n=900, dim=16, spread=0.08, seed=k)
    best, scores = choose_k_by_stability(x, [4, 5, 7, 9, 12], seed=1)
    assert best == k, scores


def test_splitting_is_unstable_and_an_equally_stable_merge_loses() -> None:
    x, _ = planted(6, n=900, dim=16, spread=0.08, seed=0)
    right = stability(x, 6, seed=0)
    assert right > 0.95
    assert stability(x, 10, seed=0) < right - 0.05  # splits planted clusters at arbitrary places
    best, scores = choose_k_by_stability(x, [4, 6, 10], seed=0)
    assert best == 6, scores  # here 4 merges two pairs of close centres the same way in both halves
