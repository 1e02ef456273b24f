"""SCL's cluster-aware contrastive term on frozen embeddings (Huang & Gong, BMVC 2022).

No official code exists and only the paper's description was available here, so this is our reading
of it, on frozen embeddings (no image augmentations, hence no instance-level view pairs):

- Features: f = normalise(g(h(x))), a projection g of the trunk's output h(x) for the frozen embedding
  x; the caller's head gives f for the batch rows and for each row's m nearest neighbours (neighbours
  travel as embeddings).
- Pseudo-clusters: one label per batch row (the cluster head's argmax, or -1 for a row that should
  take no part).
- Consistency condition (the consensus of visual similarity and cluster boundaries): neighbour n of
  row i counts as a positive of i only when n's predicted cluster equals i's (`consistent_neighbors`).
- Loss, SupCon-style with temperature tau, for each labelled anchor i with positives
  P(i) = {batch rows j != i of i's cluster} + {i's consistent neighbours} and
  negatives N(i) = {batch rows of another cluster}:
      L_i = -1/|P(i)| sum_{p in P(i)} log( exp(f_i.f_p / tau) / sum_{a in P(i) + N(i)} exp(f_i.f_a / tau) )
  averaged over the anchors that have at least one positive. Unlabelled rows are neither anchors,
  positives nor negatives.

`SCL` is the recipe (a `Method`) with its config section `SclConfig` (cluster.scl, in settings.py): SCAN's
cluster heads on its trunk and, beside them, a learnt unit projection f of the trunk (the heads do not
read f); the loss is SCAN's consistency + entropy plus contrastive_weight x this term on f, which
shapes the trunk the heads read.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from scaleclust.cluster.heads import ClusterHeads
from scaleclust.cluster.method import saved_by_earlier
from scaleclust.cluster.settings import SclConfig
from scaleclust.cluster.scan import SCAN
from scaleclust.cluster.shapes import check_shape


def consistent_neighbors(labels: torch.Tensor, neighbor_labels: torch.Tensor) -> torch.Tensor:
    """bool (b, m): neighbour n of row i shares i's (non-negative) cluster label."""
    check_shape("labels", labels, (None,), "(b,)")
    check_shape("neighbor_labels", neighbor_labels, (labels.shape[0], None), "(b, m)")
    return (neighbor_labels == labels[:, None]) & (labels[:, None] >= 0)


def cluster_contrastive_loss(f: torch.Tensor, labels: torch.Tensor, neighbors: torch.Tensor | None = None,
                             neighbor_mask: torch.Tensor | None = None, temperature: float = 0.1) -> torch.Tensor:
    """The SupCon-style cluster-aware loss of the module docstring: a scalar.

    f (b, p): unit projected features of the batch; labels (b,): pseudo-clusters (-1: left out);
    neighbors (b, m, p): unit projected features of each row's neighbours; neighbor_mask (b, m): which
    neighbours are positives (default all; pass `consistent_neighbors(...)` for SCL's condition).
    """
    check_shape("f", f, (None, None), "(b, p)")
    b, p = f.shape
    check_shape("labels", labels, (b,), "(b,)")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    labelled = labels >= 0
    same = labels[:, None] == labels[None, :]
    not_self = ~torch.eye(b, dtype=torch.bool, device=f.device)
    pair = labelled[:, None] & labelled[None, :] & not_self
    pos = [same & pair]
    cand = [pair]                                                          # P(i) + N(i) among the batch
    logits = [f @ f.T / temperature]                                       # (b, b)
    if neighbors is not None:
        check_shape("neighbors", neighbors, (b, None, p), "(b, m, p)")
        m = neighbors.shape[1]
        if neighbor_mask is None:
            neighbor_mask = torch.ones(b, m, dtype=torch.bool, device=f.device)
        check_shape("neighbor_mask", neighbor_mask, (b, m), "(b, m)")
        nbr_pos = neighbor_mask.bool() & labelled[:, None]
        pos.append(nbr_pos)
        cand.append(nbr_pos)
        logits.append(torch.einsum("bp,bmp->bm", f, neighbors) / temperature)
    pos_mask, cand_mask, s = torch.cat(pos, 1), torch.cat(cand, 1), torch.cat(logits, 1)
    anchors = pos_mask.any(1)
    if not anchors.any():
        return 0.0 * f.sum()                                               # in the graph, no gradient
    # Only anchors' rows: each has a positive among its candidates, so every logsumexp is finite.
    pos_mask, cand_mask, s = pos_mask[anchors], cand_mask[anchors], s[anchors]
    log_denom = torch.logsumexp(s.masked_fill(~cand_mask, -torch.inf), dim=1, keepdim=True)
    log_prob = (s - log_denom).masked_fill(~pos_mask, 0.0)
    return (-log_prob.sum(1) / pos_mask.sum(1)).mean()


class ProjectedHeads(ClusterHeads):
    """SCAN's heads (`heads` linear cluster heads on a shared Linear(D->h) BN ReLU trunk) with, beside
    the heads, a Linear(->p) projection of the trunk, L2-normalised: f, which only the contrastive term
    reads. forward(x): logits (heads, b, K); forward(x, features=True): (logits, f (b, p)).

    The heads once read f instead: a unit 128-d bottleneck under the heads held SCL below k-means on
    every labelled set (ACC 0.41-0.46); beside them it matches SCAN (docs/measurements.md)."""

    def __init__(self, in_dim: int, k: int, heads: int, hidden: int, projection: int) -> None:
        super().__init__(in_dim, k, heads, hidden)
        self.project = nn.Linear(hidden if hidden > 0 else in_dim, projection)

    def forward(self, x: torch.Tensor, features: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        logits = self.heads(h).view(len(x), self.n_heads, self.k).transpose(0, 1)
        return (logits, nn.functional.normalize(self.project(h), dim=-1)) if features else logits

    def load_state_dict(self, state_dict: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        """torch's, with a clear error for a head saved when the heads read the projection."""
        if "clusters.heads.weight" in state_dict:
            raise saved_by_earlier("SCL head", "whose cluster heads read the projection")
        return super().load_state_dict(state_dict, *args, **kwargs)


class SCL(SCAN):
    """SCAN's loss on the heads, plus the cluster-aware contrastive term on the projection over rows and
    all their neighbours, with pseudo-labels from the mean of the heads' probabilities."""

    config: SclConfig

    def head(self, in_dim: int) -> ProjectedHeads:
        return ProjectedHeads(in_dim, self.k, self.config.heads, self.config.hidden, self.config.projection)

    def loss(self, head: nn.Module, x: torch.Tensor, step: int,
             neighbors: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        total, stats = super().loss(head, x, step, neighbors)
        b, m, d = neighbors.shape
        logits, f = head(torch.cat([x, neighbors.reshape(b * m, d)]), features=True)
        top, labels = logits.detach().softmax(-1).mean(0).max(-1)         # heads' consensus, (b + b m,)
        labels = labels.masked_fill(top < self.config.label_confidence, -1)  # unsure rows take no part
        mask = consistent_neighbors(labels[:b], labels[b:].view(b, m))
        contrast = self.config.contrastive_weight * cluster_contrastive_loss(
            f[:b], labels[:b], f[b:].view(b, m, -1), mask, self.config.temperature)
        stats["contrast"] = contrast.item()
        stats["consistent"] = float(mask.float().mean())
        stats["loss"] += contrast.item()
        return total + contrast, stats
