"""The label-free confidence temperature (scaleclust.cluster.calibration): its search hits its target,
neighbour agreement counts what it says, a head that is right about as often as its neighbours agree
is no longer reported as nearly always sure, and a head less sure than that is not made surer."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from scaleclust.cluster.calibration import calibrate, describe, neighbor_agreement, softmax, temperature
from scaleclust.cluster.heads import HeadAssigner


def blobs(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two tight, far apart groups of unit rows in 8 dimensions, and each row's group."""
    rng = np.random.default_rng(seed)
    truth = np.arange(rows) % 2
    x = np.eye(8, dtype=np.float32)[truth * 4] + 0.05 * rng.standard_normal((rows, 8)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True), truth


@pytest.mark.parametrize("target", [0.3, 0.55, 0.9])
def test_temperature_reaches_the_target_mean_confidence(target: float) -> None:
    logits = np.random.default_rng(0).standard_normal((500, 4)) * 6
    t = temperature(logits, target)
    assert abs(softmax(logits, t).max(axis=1).mean() - target) < 1e-4
    assert softmax(logits, t).argmax(axis=1).tolist() == logits.argmax(axis=1).tolist()  # ranks unchanged


def test_neighbor_agreement_counts_neighbours_in_the_same_cluster() -> None:
    x, truth = blobs(400, 1)
    assert neighbor_agreement(x, truth, 2) == (1.0, 40)  # 0.2 * 400 / 2 neighbours, all in the row's own group
    flipped = truth.copy()
    flipped[::5] ^= 1  # a fifth of the rows in the other cluster: a row agrees with 0.8 * 0.8 + 0.2 * 0.2 of its own group
    agreement, _ = neighbor_agreement(x, flipped, 2)
    assert abs(agreement - 0.68) < 0.03


def test_an_overconfident_head_is_calibrated_to_its_neighbours() -> None:
    x, truth = blobs(400, 2)
    clusters = truth.copy()
    clusters[::5] ^= 1  # wrong on a fifth of the rows, yet sure of every one
    logits = 12.0 * np.eye(2)[clusters]
    found = calibrate(x, logits)
    assert found["mean_confidence_raw"] > 0.99 and found["temperature"] > 1
    assert abs(found["mean_confidence"] - found["agreement"]) < 1e-3 and found["mean_confidence"] < 0.75
    assert describe(found).startswith(f"confidence: temperature {found['temperature']:.3f}, so that the mean")


def test_an_underconfident_head_keeps_its_own_softmax() -> None:
    x, truth = blobs(400, 4)
    logits = 0.5 * np.eye(2)[truth]  # right on every row, and its neighbours agree, yet barely sure
    found = calibrate(x, logits)
    assert found["agreement"] == 1.0 and found["temperature"] == 1.0
    assert found["mean_confidence"] == found["mean_confidence_raw"] < 0.65
    assert "temperature 1.000, as the mean confidence" in describe(found)


def test_head_assigner_applies_its_temperature() -> None:
    head = torch.nn.Linear(2, 3)

    class Heads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner, self.k = head, 3

        def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return [self.inner(x)]

    x = np.random.default_rng(3).standard_normal((50, 2)).astype(np.float32)
    raw, cooled = HeadAssigner(Heads(), 0), HeadAssigner(Heads(), 0, temperature=3.0)
    assert np.allclose(cooled.assign(x)[1], softmax(raw.logits(x), 3.0).max(axis=1), atol=1e-6)
    assert raw.assign(x)[0].tolist() == cooled.assign(x)[0].tolist()
    assert (cooled.assign(x)[1] < raw.assign(x)[1]).all()
