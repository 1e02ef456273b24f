"""SPICE as a `Method` over scaleclust.cluster.spice's pseudo-labellers (Niu et al. 2022), on frozen
embeddings: several heads trained with cross-entropy on each batch's prototype pseudo-labels; after
`steps`, each head adds cross-entropy on its reliable rows (neighbours agree, confident, balanced),
with the row's drawn neighbour as its augmented view. The lowest prototype loss picks the head.
"""
from __future__ import annotations

import torch
from torch import nn

from scaleclust.cluster.scan import HeadsMethod
from scaleclust.cluster.spice import neighbor_labels, prototype_labels, reliable_set


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
