"""SIC as a `Method` (Cai et al. 2023) on frozen embeddings: SCAN's kNN consistency + entropy over
several heads, plus beta x cross-entropy of each head against its semantic pseudo-labels. The labels
are drawn per batch (the reference draws them per epoch over all rows, which one process cannot hold at
scale): image centres from the head's top rows, semantic centres from the nearest nouns of the space,
each row labelled by its nearest semantic centre (scaleclust.cluster.sic).
"""
from __future__ import annotations

import torch
from torch import nn

from scaleclust.cluster.scan import SCAN
from scaleclust.cluster.sic import pseudo_labels
from scaleclust.config import SicConfig


class SIC(SCAN):
    """SCAN's loss plus semantic_weight x CE(head logits, semantic pseudo-labels), per head; `vectors`
    (V, d) are the semantic space's noun vectors in the embedding space (needed to train, not to assign)."""

    def __init__(self, config: SicConfig, k: int, vectors: torch.Tensor | None = None) -> None:
        super().__init__(config, k)
        self.vectors = vectors

    def loss(self, head: nn.Module, x: torch.Tensor, step: int,
             neighbors: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        if self.vectors is None:
            raise ValueError("SIC needs the semantic space's noun vectors to train")
        total, stats = super().loss(head, x, step, neighbors)
        vectors = self.vectors.to(x.device)
        logits = head(x)                                                  # (H, b, K)
        semantic = x.new_zeros(())
        for h in range(len(logits)):
            target = pseudo_labels(x, logits[h].detach(), vectors, self.config.centre_rows, self.config.centre_nouns)
            ce = self.config.semantic_weight * nn.functional.cross_entropy(logits[h], target)
            stats[f"head{h}"] += ce.item()
            semantic = semantic + ce
        stats["semantic"] = semantic.item() / len(logits)
        stats["loss"] += stats["semantic"]
        return total + semantic, stats
