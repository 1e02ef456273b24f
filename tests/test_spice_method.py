"""The SPICE recipe over issue 10's pieces: needs neighbours, and recovers planted clusters."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from scaleclust.cluster.local_fit import fit
from scaleclust.cluster.heads import HeadAssigner
from scaleclust.cluster.spice import SPICE
from scaleclust.cluster.settings import SpiceConfig


def test_spice_needs_neighbours() -> None:
    method = SPICE(SpiceConfig(heads=1), k=2)
    with pytest.raises(ValueError, match="neighbours"):
        method.loss(method.head(4), torch.randn(4, 4), 0)


def test_spice_recovers_planted_clusters_and_self_trains_on_reliable_rows() -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 60)
    x = np.eye(3, 16)[labels] * 3 + rng.normal(size=(180, 16)) * 0.5
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    near = np.argsort(-(x @ x.T), axis=1)[:, 1:6]  # exact kNN of 180 planted rows (the test's own truth)
    method = SPICE(SpiceConfig(heads=2, steps=60, self_label_steps=20, batch_size=90, neighbors=5, lr=0.05,
                               confidence=0.8), k=3)
    stats: list[dict[str, float]] = []
    head = fit(torch.from_numpy(x), method, seed=0, neighbors=torch.from_numpy(x[near]),
               log=lambda step, s: stats.append(s))
    cluster, _, _ = HeadAssigner(head, 0).assign(x)
    table = np.zeros((3, 3), int)
    np.add.at(table, (cluster, labels), 1)
    assert (table.max(axis=0) == 60).all() and len(set(cluster)) == 3
    assert stats[-1]["reliable0"] > 0.3  # the self-training phase found reliable rows (balanced per cluster)
