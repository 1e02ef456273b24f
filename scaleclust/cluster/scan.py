"""SCAN on frozen embeddings (Van Gansbeke et al. 2020): kNN consistency + entropy, several heads trained
at once and one chosen without labels (lowest loss), then self-labelling on confident rows.

Terms are plain functions of probabilities / logits so each is tested on hand-computed tensors; `SCAN`
is the `Method` that the training loops drive, with each row's neighbours' embeddings in the batch.

Its config section (cluster.scan) is `ScanConfig`, in settings.py.
"""
from __future__ import annotations

import torch
from torch import nn

from scaleclust.cluster.heads import HeadsMethod, neighbor_labels
from scaleclust.cluster.settings import ScanConfig

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


class SCAN(HeadsMethod):
    config: ScanConfig

    """Loss of a batch (rows x, neighbours' embeddings (b, m, d)): the sum over heads of SCAN's loss
    with one neighbour drawn per row; after `steps`, each head adds class-balanced cross-entropy of its
    own confident rows' labels on those rows' drawn neighbours (on frozen features the neighbour is the
    row's augmented view); with `agreement` > 0 a confident row also needs that share of its
    neighbours predicted in its cluster (SPICE's reliable set). Per-head SCAN losses are logged as `head{h}`: the lowest over the last
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
        # the reliable set's neighbour test, in the self-labelling steps when it is asked for
        near = neighbor_labels(head, neighbors) if step >= self.config.steps and self.config.agreement > 0 else None
        total = x.new_zeros(())
        stats: dict[str, float] = {}
        for h in range(len(both)):
            loss, _, _ = scan_loss(logits[h], nlogits[h].unsqueeze(1), self.config.entropy_weight)
            stats[f"head{h}"] = loss.item()
            if step >= self.config.steps:
                mask, target = confident_targets(logits[h].detach().softmax(-1), self.config.threshold)
                if near is not None:
                    mask &= (near[h] == target[:, None]).float().mean(1) >= self.config.agreement
                stats[f"confident{h}"] = float(mask.float().mean())
                loss = loss + balanced_cross_entropy(nlogits[h], target, mask)
            total = total + loss
        stats["loss"] = total.item() / len(both)
        return total, stats
