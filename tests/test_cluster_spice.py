"""SPICE pseudo-labellers: prototype labels on hand-computed and planted batches, the reliable set on
planted neighbour disagreement, neighbour labels through the head, shape errors."""
import pytest
import torch
from torch import nn

from scaleclust.cluster.heads import neighbor_labels
from scaleclust.cluster.spice import prototype_labels, reliable_set


def planted(k: int, per: int, d: int, seed: int, noise: float = 0.05) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows around k random unit centres: (x normalised, true labels, centres)."""
    g = torch.Generator().manual_seed(seed)
    centres = nn.functional.normalize(torch.randn(k, d, generator=g), dim=1)
    y = torch.arange(k).repeat_interleave(per)
    x = nn.functional.normalize(centres[y] + noise * torch.randn(k * per, d, generator=g), dim=1)
    return x, y, centres


def test_prototype_labels_hand_computed_batch_resolves_a_doubly_claimed_row_by_similarity():
    # One top row per cluster (ceil(0.5*4/2) = 1): prototypes are rows 0 and 1. Each labels its
    # 4//2 = 2 nearest rows: p0 -> rows 0 (cos 1), 1 (.8); p1 -> rows 1 (1), 2 (.96). Row 1 is closer to p1.
    x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    q = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.6, 0.4]])
    assert prototype_labels(q, x).tolist() == [0, 1, 1, -1]


def test_prototype_labels_recover_planted_clusters_from_a_weak_head():
    x, y, centres = planted(k=4, per=50, d=16, seed=0)
    perm = torch.tensor([2, 0, 3, 1])                  # the head's cluster c is planted cluster perm[c]
    g = torch.Generator().manual_seed(1)
    # A weak head: probabilities barely above uniform and noisy, but ranked the right way at the top.
    q = torch.softmax(2.0 * x @ centres[perm].T + 0.3 * torch.randn(200, 4, generator=g), dim=1)
    labels = prototype_labels(q, x)
    assert bool((labels >= 0).all())                   # equal clusters of B/K rows: every row labelled
    assert torch.equal(perm[labels], y)


def test_reliable_set_excludes_rows_whose_neighbours_disagree_or_that_are_unsure():
    k, m = 3, 10
    labels = torch.arange(k).repeat(8)                                 # 24 rows, 8 per cluster
    q = nn.functional.one_hot(labels, k).float() * 0.995 + 0.005 / k  # confident everywhere
    nbr = labels[:, None].repeat(1, m)                                 # all neighbours agree ...
    nbr[0, :2] = (labels[0] + 1) % k                                   # ... row 0: 80% agree -> out
    nbr[1, :1] = (labels[1] + 1) % k                                   # row 1: exactly 90% -> in
    nbr[2, :] = (labels[2] + 2) % k                                    # row 2: none agree -> out
    q[4] = torch.tensor([0.01, 0.985, 0.005])                          # row 4 (cluster 1): max q .985 -> out
    reliable = reliable_set(q, nbr, balance=False)
    assert not reliable[0] and reliable[1] and not reliable[2] and not reliable[4]
    assert int(reliable.sum()) == 24 - 3


def test_reliable_set_is_balanced_per_cluster_keeping_the_most_confident_rows():
    k = 3
    labels = torch.tensor([0] * 6 + [1] * 4 + [2] * 2)
    conf = torch.tensor([0.991, 0.999, 0.995, 0.992, 0.998, 0.993, 0.996, 0.999, 0.994, 0.997, 0.992, 0.993])
    q = nn.functional.one_hot(labels, k).float() * conf[:, None]
    q = q + (1 - conf[:, None]) / 2 * (1 - nn.functional.one_hot(labels, k).float())
    nbr = labels[:, None].repeat(1, 5)
    reliable = reliable_set(q, nbr)                                  # every row reliable; cap = 2 per cluster
    assert torch.nonzero(reliable).flatten().tolist() == [1, 4, 7, 9, 10, 11]
    nbr[10] = 0                                                      # cluster 2 down to one reliable row
    assert torch.nonzero(reliable_set(q, nbr)).flatten().tolist() == [1, 7, 11]


def test_neighbour_labels_use_the_head_in_eval_mode_and_restore_it():
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 3)).train()
    head[1].running_mean.fill_(0.5)
    before = head[1].running_mean.clone()
    nbrs = torch.randn(5, 4, 8)
    got = neighbor_labels(head, nbrs)
    assert got.shape == (5, 4) and head.training
    assert torch.equal(head[1].running_mean, before)                 # no statistics from neighbours
    head.eval()
    assert torch.equal(got, head(nbrs.reshape(20, 8)).argmax(1).reshape(5, 4))


def test_neighbour_labels_of_a_multi_head_module():
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.heads = nn.ModuleList([nn.Linear(8, 3), nn.Linear(8, 3)])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.stack([h(x) for h in self.heads])

    head = TwoHeads()
    nbrs = torch.randn(5, 4, 8)
    got = neighbor_labels(head, nbrs)
    assert got.shape == (2, 5, 4)
    assert torch.equal(got[1], head.heads[1](nbrs).argmax(-1))


@pytest.mark.parametrize("call,message", [
    (lambda: prototype_labels(torch.rand(10, 3), torch.rand(9, 4)), r"x must have shape \(B, d\) = \(10, \?\), got \(9, 4\)"),
    (lambda: prototype_labels(torch.rand(10), torch.rand(10, 4)), r"q must have shape \(B, K\)"),
    (lambda: prototype_labels(torch.rand(2, 3), torch.rand(2, 4)), r"at least K=3 rows, got 2"),
    (lambda: reliable_set(torch.rand(6, 3), torch.zeros(5, 4, dtype=torch.long)), r"neighbor_labels must have shape \(b, m\) = \(6, \?\), got \(5, 4\)"),
    (lambda: neighbor_labels(nn.Linear(8, 3), torch.rand(5, 8)), r"neighbors must have shape \(b, m, d\)"),
    (lambda: neighbor_labels(nn.Identity(), torch.rand(5, 2, 8, 1)), r"neighbors must have shape"),
])
def test_bad_shapes_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()
