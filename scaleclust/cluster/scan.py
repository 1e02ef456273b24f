"""SCAN on frozen embeddings (Van Gansbeke et al. 2020): kNN consistency + entropy, several heads trained
at once and one chosen without labels (lowest loss), then self-labelling on confident rows.

Terms are plain functions of probabilities / logits so each is tested on hand-computed tensors; `SCAN`
is the `Method` that the training loops drive, with each row's neighbours' embeddings in the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from scaleclust.cluster.method import unwrap
from scaleclust.config import HeadsConfig

EPS = 1e-8


def consistency(p: torch.Tensor, pn: torch.Tensor) -> torch.Tensor:
    """-mean_i mean_j log <p_i, p_j> over rows i (b, K) and their neighbours j (b, m, K)."""
    dots = torch.einsum("bk,bmk->bm", p, pn)
    return -dots.clamp_min(EPS).log().mean()


def entropy(p: torch.Tensor) -> torch.Tensor:
    """H(mean_i p_i): high when the batch spreads over all clusters (no collapse into one)."""
    mean = p.mean(0)
    return -(mean * mean.clamp_min(EPS).log()).sum()


def scan_loss(logits: torch.Tensor, neighbor_logits: torch.Tensor, entropy_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SCAN's loss of one head: consistency(rows, neighbours) - entropy_weight * H(mean p);
    logits (b, K), neighbor_logits (b, m, K). Returns (loss, consistency, entropy)."""
    p = logits.softmax(-1)
    pn = neighbor_logits.softmax(-1)
    cons, ent = consistency(p, pn), entropy(p)
    return cons - entropy_weight * ent, cons, ent


def confident_targets(p: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of rows whose top probability exceeds threshold, their argmax) for self-labelling."""
    top, target = p.max(-1)
    return top > threshold, target


def balanced_cross_entropy(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the masked rows, each cluster weighted by 1 / its count among them, so a
    cluster that is confident more often does not swallow the others (SCAN's class balancing).
    Zero (still in the graph) when no row is confident."""
    k = logits.shape[-1]
    if not bool(mask.any()):
        return 0.0 * logits.sum()
    counts = torch.bincount(target[mask], minlength=k).to(logits.dtype)
    weight = torch.where(counts > 0, counts.sum() / (k * counts.clamp_min(1)), torch.zeros_like(counts))
    return nn.functional.cross_entropy(logits[mask], target[mask], weight=weight)


class ClusterHeads(nn.Module):
    """`heads` classifiers over K clusters on a shared trunk: Linear(D->h) BN ReLU (hidden > 0), or
    none (linear heads on the embeddings). forward: (b, D) -> logits (heads, b, K)."""

    def __init__(self, in_dim: int, k: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.trunk = (nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
                      if hidden > 0 else nn.Identity())
        self.heads = nn.Linear(hidden if hidden > 0 else in_dim, heads * k)
        self.k, self.n_heads = k, heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.trunk(x)).view(len(x), self.n_heads, self.k).transpose(0, 1)


class HeadsMethod:
    """The shared part of the multi-head methods trained on neighbours (SCAN, SPICE): `heads` cluster
    heads on one trunk, Adam, `steps` + `self_label_steps` steps, `neighbors` per row."""

    def __init__(self, config: HeadsConfig, k: int) -> None:
        self.config, self.k = config, k
        self.steps = config.steps + config.self_label_steps
        self.batch_size = config.batch_size
        self.neighbors = config.neighbors

    def head(self, in_dim: int) -> ClusterHeads:
        return ClusterHeads(in_dim, self.k, self.config.heads, self.config.hidden)

    def optimizer(self, head: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(head.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)

    def on_step(self, head: nn.Module, step: int) -> None:
        """No schedule: nothing to do between steps."""


class SCAN(HeadsMethod):
    """Loss of a batch (rows x, neighbours' embeddings (b, m, d)): the sum over heads of SCAN's loss
    with one neighbour drawn per row; after `steps`, each head adds class-balanced cross-entropy of its
    own confident rows' labels on those rows' drawn neighbours (on frozen features the neighbour is the
    row's augmented view). Per-head SCAN losses are logged as `head{h}`: the lowest over the last
    steps picks the head that assigns."""

    def loss(self, head: nn.Module, x: torch.Tensor, step: int,
             neighbors: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        if neighbors is None:
            raise ValueError("SCAN needs each row's neighbours' embeddings (b, m, d)")
        b, m, _ = neighbors.shape
        # one neighbour per row and step, as SCAN draws them; seeded by the step so a resumed fit
        # draws what the unbroken one drew
        pick = torch.randint(m, (b,), generator=torch.Generator().manual_seed(step)).to(x.device)
        both = head(torch.cat([x, neighbors[torch.arange(b, device=x.device), pick]]))   # (H, 2b, K)
        logits, nlogits = both[:, :b], both[:, b:]
        total = x.new_zeros(())
        stats: dict[str, float] = {}
        for h in range(len(both)):
            loss, _, _ = scan_loss(logits[h], nlogits[h].unsqueeze(1), self.config.entropy_weight)
            stats[f"head{h}"] = loss.item()
            if step >= self.config.steps:
                mask, target = confident_targets(logits[h].detach().softmax(-1), self.config.threshold)
                stats[f"confident{h}"] = float(mask.float().mean())
                loss = loss + balanced_cross_entropy(nlogits[h], target, mask)
            total = total + loss
        stats["loss"] = total.item() / len(both)
        return total, stats

def select_head(stats: list[dict[str, float]], heads: int) -> int:
    """The head with the lowest mean SCAN loss over the given steps' stats (label-free selection)."""
    means = [float(np.mean([s[f"head{h}"] for s in stats])) for h in range(heads)]
    return int(np.argmin(means))


@dataclass(frozen=True)
class HeadAssigner:
    """Assigns any rows with one head of a trained ClusterHeads: the argmax cluster, its softmax
    probability as confidence, and the runner-up."""

    head: nn.Module
    index: int

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor | np.ndarray, batch_size: int = 4096) -> np.ndarray:
        module = unwrap(self.head)
        training = module.training
        module.eval()
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        parts = [module(x[i:i + batch_size])[self.index].softmax(-1) for i in range(0, len(x), batch_size)]
        module.train(training)
        return torch.cat(parts).numpy() if parts else np.zeros((0, module.k), np.float32)

    def assign(self, x: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cluster int32, confidence float32, second-choice cluster int32) per row."""
        p = self.probabilities(x)
        order = np.argsort(-p, axis=1)[:, :2]
        rows = np.arange(len(p))
        return order[:, 0].astype(np.int32), p[rows, order[:, 0]].astype(np.float32), order[:, 1].astype(np.int32)
