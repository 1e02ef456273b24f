"""SPICE's pseudo-labellers on frozen embeddings (Niu et al., TIP 2022).

Prototype pseudo-labels (the head-training stage): for each cluster c, the top ceil(0.5 B/K) rows of
the batch by q[:, c] define a prototype p_c = normalise(mean of their embeddings); the floor(B/K) rows
nearest p_c (cosine) are labelled c. A row claimed by several prototypes takes the one it is most
similar to (ties: the lowest cluster index); unclaimed rows get -1. The head is then trained with
cross-entropy on the labelled rows (`F.cross_entropy(..., ignore_index=-1)`).

Reliable set (the self-training stage): row i is reliable when at least `agreement` (0.9, the code
default; the paper says 0.99) of its m neighbours' predicted labels equal its own AND max_c q_ic >=
`confidence` (0.99). The set is balanced per cluster: every cluster keeps at most as many rows as the
smallest non-empty cluster, its most confident ones. Neighbour labels come from the neighbours'
embeddings through the same head (`neighbor_labels`): at fit time neighbours travel with their rows
as embeddings, never as ids into a global table.

`SPICE` is the recipe (a `Method`) with its config section `SpiceConfig` (cluster.spice, in settings.py): several heads
trained with cross-entropy on each batch's prototype pseudo-labels; after `steps`, each head adds
cross-entropy on its reliable rows, with the row's drawn neighbour as its augmented view. The lowest
prototype loss picks the head.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from scaleclust.cluster.heads import HeadsMethod, neighbor_labels
from scaleclust.cluster.shapes import check_shape


def prototype_labels(q: torch.Tensor, x: torch.Tensor, top_fraction: float = 0.5) -> torch.Tensor:
    """SPICE prototype pseudo-labels of one batch: int64 (B,), a cluster in [0, K) or -1.

    q (B, K): cluster probabilities of the batch's rows; x (B, d): their embeddings (normalised here).
    """
    check_shape("q", q, (None, None), "(B, K)")
    b, k = q.shape
    check_shape("x", x, (b, None), "(B, d)")
    if b < k:
        raise ValueError(f"prototype labels need a batch of at least K={k} rows, got {b}")
    if not 0 < top_fraction <= k:
        raise ValueError(f"top_fraction must be in (0, K={k}], got {top_fraction}")
    x = nn.functional.normalize(x.detach(), dim=1)
    n_top = min(b, math.ceil(top_fraction * b / k))
    top = torch.argsort(q.detach(), dim=0, descending=True, stable=True)[:n_top]       # (n_top, K)
    prototypes = nn.functional.normalize(x[top].mean(0), dim=1)                          # (K, d)
    sim = x @ prototypes.T                                                               # (B, K)
    nearest = torch.argsort(sim, dim=0, descending=True, stable=True)[: b // k]         # (B/K, K)
    claimed = torch.zeros_like(sim, dtype=torch.bool)
    claimed.scatter_(0, nearest, True)
    best = torch.where(claimed, sim, torch.full_like(sim, -math.inf)).argmax(1)         # first max wins
    return torch.where(claimed.any(1), best, torch.full_like(best, -1))


def reliable_set(q: torch.Tensor, neighbor_labels: torch.Tensor, agreement: float = 0.9,
                 confidence: float = 0.99, balance: bool = True) -> torch.Tensor:
    """SPICE's reliable rows of a batch: bool (b,).

    q (b, K): cluster probabilities; neighbor_labels (b, m): the predicted labels of each row's m
    neighbours. Reliable: share(neighbour label == own argmax) >= agreement and max q >= confidence;
    with balance, each cluster keeps its most confident min_c(n_c > 0) reliable rows (ties: first row).
    """
    check_shape("q", q, (None, None), "(b, K)")
    b, k = q.shape
    check_shape("neighbor_labels", neighbor_labels, (b, None), "(b, m)")
    if neighbor_labels.shape[1] == 0:
        raise ValueError("neighbor_labels has no neighbours per row (m = 0)")
    conf, labels = q.detach().max(1)
    agree = (neighbor_labels == labels[:, None]).float().mean(1)
    reliable = (agree >= agreement) & (conf >= confidence)
    if not balance or not reliable.any():
        return reliable
    counts = torch.bincount(labels[reliable], minlength=k)
    cap = int(counts[counts > 0].min())
    # Rank rows within their cluster by confidence (reliable first), then keep the first `cap` of each.
    score = torch.where(reliable, conf, torch.full_like(conf, -1.0))
    order = torch.argsort(score, descending=True, stable=True)
    order = order[torch.argsort(labels[order], stable=True)]                 # grouped by cluster, by score
    start = torch.cumsum(torch.bincount(labels, minlength=k), 0) - torch.bincount(labels, minlength=k)
    rank = torch.empty_like(labels)
    rank[order] = torch.arange(b) - start[labels[order]]
    return reliable & (rank < cap)


class SPICE(HeadsMethod):
    """Loss: per head, CE on prototype pseudo-labels; after `steps`, plus CE on the reliable rows' views."""

    def loss(self, head: nn.Module, x: torch.Tensor, step: int,
             neighbors: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        if neighbors is None:
            raise ValueError("SPICE needs each row's neighbours' embeddings (b, m, d)")
        b, m, _ = neighbors.shape
        reliable_phase = step >= self.config.steps
        if reliable_phase:
            pick = torch.randint(m, (b,), generator=torch.Generator().manual_seed(step)).to(x.device)
            both = head(torch.cat([x, neighbors[torch.arange(b, device=x.device), pick]]))
            logits, view = both[:, :b], both[:, b:]
            near = neighbor_labels(head, neighbors)                        # (H, b, m)
        else:
            logits = head(x)
        total = x.new_zeros(())
        stats: dict[str, float] = {}
        for h in range(len(logits)):
            q = logits[h].softmax(-1)
            loss = nn.functional.cross_entropy(logits[h], prototype_labels(q, x, self.config.top_fraction),
                                               ignore_index=-1)
            stats[f"head{h}"] = loss.item()
            if reliable_phase:
                keep = reliable_set(q, near[h], self.config.agreement, self.config.confidence)
                stats[f"reliable{h}"] = float(keep.float().mean())
                if bool(keep.any()):
                    loss = loss + nn.functional.cross_entropy(view[h][keep], q.detach().argmax(-1)[keep])
            total = total + loss
        stats["loss"] = total.item() / len(logits)
        return total, stats
