"""SCAN's terms on hand-computed tiny tensors, head selection and assignment, and a planted fit."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scaleclust.cluster.local_fit import fit
from scaleclust.cluster.heads import ClusterHeads, HeadAssigner, select_head
from scaleclust.cluster.scan import SCAN, balanced_cross_entropy, confident_targets, consistency, entropy, scan_loss
from scaleclust.cluster.settings import ScanConfig


def test_consistency_is_mean_negative_log_agreement() -> None:
    p = torch.tensor([[1.0, 0.0]])
    pn = torch.tensor([[[0.5, 0.5], [1.0, 0.0]]])
    assert consistency(p, pn).item() == pytest.approx(-(math.log(0.5) + math.log(1.0)) / 2)


def test_entropy_of_the_mean_prediction() -> None:
    assert entropy(torch.tensor([[1.0, 0.0], [0.0, 1.0]])).item() == pytest.approx(math.log(2))
    assert entropy(torch.tensor([[1.0, 0.0], [1.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)


def test_scan_loss_combines_both_terms() -> None:
    logits = torch.zeros(3, 2)                      # uniform: every agreement is 1/2
    loss, cons, ent = scan_loss(logits, torch.zeros(3, 4, 2), entropy_weight=5.0)
    assert cons.item() == pytest.approx(math.log(2)) and ent.item() == pytest.approx(math.log(2))
    assert loss.item() == pytest.approx(math.log(2) - 5 * math.log(2))


def test_confident_targets_threshold_the_top_probability() -> None:
    mask, target = confident_targets(torch.tensor([[0.995, 0.005], [0.6, 0.4], [0.001, 0.999]]), 0.99)
    assert mask.tolist() == [True, False, True] and target.tolist() == [0, 0, 1]


def test_balanced_cross_entropy_weights_clusters_by_inverse_count() -> None:
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 0.0], [5.0, -5.0]])
    target = torch.tensor([0, 0, 1, 1])
    mask = torch.tensor([True, True, True, False])
    easy, hard = math.log(1 + math.exp(-2)), math.log(2)
    # cluster 0 counted twice -> weight 3/(2*2); cluster 1 once -> 3/(2*1); the unmasked row is ignored
    expected = (0.75 * 2 * easy + 1.5 * hard) / (0.75 * 2 + 1.5)
    assert balanced_cross_entropy(logits, target, mask).item() == pytest.approx(expected, rel=1e-5)
    none = balanced_cross_entropy(logits, target, torch.zeros(4, dtype=torch.bool))
    assert none.item() == 0.0


def test_heads_shape_and_selection_by_lowest_loss() -> None:
    head = ClusterHeads(8, k=3, heads=4, hidden=16)
    assert head(torch.randn(5, 8)).shape == (4, 5, 3)
    stats = [{"head0": 1.0, "head1": 0.5, "head2": 0.7}, {"head0": 0.9, "head1": 0.6, "head2": 0.2}]
    assert select_head(stats, 3) == 2  # means 0.95, 0.55, 0.45


def test_head_assigner_gives_cluster_confidence_and_runner_up() -> None:
    head = ClusterHeads(2, k=3, heads=2, hidden=0)
    with torch.no_grad():
        head.heads.weight.zero_()
        head.heads.bias.zero_()
        head.heads.weight[3:6] = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # head 1
    cluster, confidence, second = HeadAssigner(head, 1).assign(np.array([[2.0, 0.0], [0.0, 3.0]], np.float32))
    assert cluster.tolist() == [0, 1] and second.tolist() == [1, 0]
    e2 = math.exp(2)
    assert confidence[0] == pytest.approx(e2 / (e2 + 2), rel=1e-5)


def test_scan_needs_neighbours() -> None:
    method = SCAN(ScanConfig(heads=1, hidden=0), k=2)
    with pytest.raises(ValueError, match="neighbours"):
        method.loss(method.head(4), torch.randn(3, 4), 0)


def test_scan_recovers_planted_clusters_from_neighbours() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(3, 16) * 3
    labels = np.repeat(np.arange(3), 60)
    x = centres[labels] + rng.normal(size=(180, 16)) * 0.5
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    near = np.argsort(-(x @ x.T), axis=1)[:, 1:6]  # exact kNN of 180 planted rows (the test's own truth)
    method = SCAN(ScanConfig(heads=2, hidden=32, steps=80, self_label_steps=20, batch_size=60, neighbors=5), k=3)
    head = fit(torch.from_numpy(x), method, seed=0, neighbors=torch.from_numpy(x[near]))
    cluster, confidence, _ = HeadAssigner(head, 0).assign(x)
    table = np.zeros((3, 3), int)
    np.add.at(table, (cluster, labels), 1)
    assert (table.max(axis=0) == 60).all() and len(set(cluster)) == 3
    assert confidence.mean() > 0.9


def test_self_labelling_with_agreement_keeps_only_rows_whose_neighbours_agree() -> None:
    # two well-separated groups; the head puts them in clusters 0 and 1 with confidence ~1; step 1 is
    # the first self-labelling step
    x = torch.cat([torch.full((4, 2), 0.0) + torch.tensor([5.0, 0.0]), torch.tensor([[0.0, 5.0]]).repeat(4, 1)])
    method = SCAN(ScanConfig(heads=1, hidden=0, steps=1, threshold=0.9, agreement=0.5), k=2)
    head = method.head(2)
    with torch.no_grad():
        head.heads.weight.copy_(torch.eye(2) * 4)
        head.heads.bias.zero_()
    same = x[:, None].repeat(1, 2, 1)                       # every neighbour in the row's own group
    other = x.flip(0)[:, None].repeat(1, 2, 1)              # every neighbour in the other group
    mixed = torch.cat([same[:4, :1], other[:4, :1]], 1)     # first group: one of two neighbours agrees
    _, agreed = method.loss(head, x, 1, same)
    _, disagreed = method.loss(head, x, 1, other)
    _, half = method.loss(head, x, 1, torch.cat([mixed, other[4:]]))
    assert agreed["confident0"] == 1.0 and disagreed["confident0"] == 0.0 and half["confident0"] == 0.5
    confidence_alone = SCAN(ScanConfig(heads=1, hidden=0, steps=1, threshold=0.9), k=2)
    assert confidence_alone.loss(head, x, 1, other)[1]["confident0"] == 1.0
