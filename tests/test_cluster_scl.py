"""SCL's cluster-aware contrastive term: values and gradients on hand-computed 2-4 row cases, the
neighbour consistency condition, rows left out, shape errors."""
import math

import pytest
import torch

from scaleclust.cluster.scl import cluster_contrastive_loss, consistent_neighbours


def test_three_rows_value_and_gradient_pull_positives_in_and_push_negatives_out():
    # Anchor 0: positive row 1 (s=0), negative row 2 (s=1): log(1+e). Anchor 1: positive row 0 (s=0),
    # negative row 2 (s=0): log 2. Row 2 has no positive: not an anchor. tau = 1.
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], requires_grad=True)
    loss = cluster_contrastive_loss(f, torch.tensor([0, 0, 1]), temperature=1.0)
    assert loss.item() == pytest.approx((math.log(1 + math.e) + math.log(2)) / 2, rel=1e-6)
    loss.backward()
    w = math.e / (1 + math.e)
    # d/df1: -w/2 f0 (the positive is pulled towards its anchor); d/df2 = (w f0 + f1/2)/2 > 0 along the
    # anchors (the negative is pushed away from them).
    assert torch.allclose(f.grad[1], torch.tensor([-w / 2, 0.0]), atol=1e-6)
    assert torch.allclose(f.grad[2], torch.tensor([w / 2, 0.25]), atol=1e-6)


def test_neighbours_are_positives_only_when_consistent():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    nbrs = torch.tensor([[[0.6, 0.8]], [[0.0, 1.0]]])                  # s = 1.2 and 2 at tau = 0.5
    every = cluster_contrastive_loss(f, labels, nbrs, temperature=0.5)
    assert every.item() == pytest.approx((math.log(1 + math.exp(-1.2)) + math.log(1 + math.exp(-2))) / 2, rel=1e-6)
    mask = consistent_neighbours(labels, torch.tensor([[0], [0]]))     # row 1's neighbour is in cluster 0
    assert mask.tolist() == [[True], [False]]
    kept = cluster_contrastive_loss(f, labels, nbrs, mask, temperature=0.5)
    assert kept.item() == pytest.approx(math.log(1 + math.exp(-1.2)), rel=1e-6)


def test_gradient_moves_a_neighbour_towards_its_anchor():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    nbrs = torch.tensor([[[0.6, 0.8]], [[0.0, 1.0]]], requires_grad=True)
    cluster_contrastive_loss(f, torch.tensor([0, 1]), nbrs, temperature=0.5).backward()
    assert nbrs.grad[0, 0, 0] < 0 and nbrs.grad[1, 0, 1] < 0         # descent raises f_i . f_n


def test_unlabelled_rows_take_no_part_and_no_anchor_gives_zero_without_nan():
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [1.0, 0.0]], requires_grad=True)
    loss = cluster_contrastive_loss(f, torch.tensor([0, 0, -1, 1]), temperature=1.0)
    assert loss.item() == pytest.approx((math.log(1 + math.e) + math.log(2)) / 2, rel=1e-6)
    loss.backward()
    assert torch.equal(f.grad[2], torch.zeros(2))
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    none = cluster_contrastive_loss(g, torch.tensor([0, 1]))           # no row has a positive
    none.backward()
    assert none.item() == 0.0 and torch.equal(g.grad, torch.zeros(2, 2))


@pytest.mark.parametrize("call,message", [
    (lambda: cluster_contrastive_loss(torch.rand(3, 2), torch.tensor([0, 1])), r"labels must have shape \(b,\) = \(3\)"),
    (lambda: cluster_contrastive_loss(torch.rand(3, 2), torch.tensor([0, 1, 1]), torch.rand(3, 4, 5)),
     r"neighbours must have shape \(b, m, p\) = \(3, \?, 2\), got \(3, 4, 5\)"),
    (lambda: cluster_contrastive_loss(torch.rand(3, 2), torch.tensor([0, 1, 1]), torch.rand(3, 4, 2),
                                      torch.ones(3, 5, dtype=torch.bool)), r"neighbour_mask must have shape \(b, m\)"),
    (lambda: cluster_contrastive_loss(torch.rand(3, 2), torch.tensor([0, 1, 1]), temperature=0), r"temperature"),
    (lambda: consistent_neighbours(torch.tensor([0, 1]), torch.zeros(3, 2)), r"neighbour_labels must have shape"),
])
def test_bad_shapes_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
