"""SCL as a `Method` (Huang & Gong 2022) on frozen embeddings: cluster heads read a learnt unit
projection f of each row; the loss is SCAN's kNN consistency + entropy over the heads plus
contrastive_weight x the cluster-aware contrastive term on f (scaleclust.cluster.scl), whose positives
are the batch rows and the row's neighbours that share its pseudo-label (the heads' consensus argmax,
for rows whose consensus probability reaches label_confidence; the others take no part).
"""
from __future__ import annotations

import torch
from torch import nn

from scaleclust.cluster.scan import SCAN, ClusterHeads
from scaleclust.cluster.scl import cluster_contrastive_loss, consistent_neighbors
from scaleclust.config import SclConfig


class ProjectedHeads(nn.Module):
    """Linear(D->h) BN ReLU (hidden > 0), Linear(->p), L2-normalised: f; then `heads` linear cluster
    heads on f. forward(x): logits (heads, b, K); forward(x, features=True): (logits, f (b, p))."""

    def __init__(self, in_dim: int, k: int, heads: int, hidden: int, projection: int) -> None:
        super().__init__()
        trunk = [nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU()] if hidden > 0 else []
        self.project = nn.Sequential(*trunk, nn.Linear(hidden if hidden > 0 else in_dim, projection))
        self.clusters = ClusterHeads(projection, k, heads, 0)
        self.k, self.n_heads = k, heads

    def forward(self, x: torch.Tensor, features: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        f = nn.functional.normalize(self.project(x), dim=-1)
        logits = self.clusters(f)
        return (logits, f) if features else logits


class SCL(SCAN):
    """SCAN's loss on the projected heads, plus the cluster-aware contrastive term over rows and all
    their neighbours, with pseudo-labels from the mean of the heads' probabilities."""

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
