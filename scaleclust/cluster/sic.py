"""SIC's semantic pseudo-labels (Cai et al. 2023) on plain tensors: image centres from the head's most
confident rows, semantic centres from the nouns of the semantic space nearest to them, and each row's
label = the semantic centre it is closest to. The semantic space's vectors live in the image-embedding
space (scaleclust.semantic), so nouns and rows compare by cosine.

`SIC` is the recipe (a `Method`) with its config section `SicConfig` (cluster.sic, in settings.py): SCAN's kNN
consistency + entropy over several heads, plus beta x cross-entropy of each head against its semantic
pseudo-labels, drawn per batch (the reference draws them per epoch over all rows, which one process
cannot hold at scale).
"""
from __future__ import annotations

import torch
from torch import nn

from scaleclust.cluster.settings import SicConfig
from scaleclust.cluster.scan import SCAN


def image_centres(x: torch.Tensor, logits: torch.Tensor, keep: float = 0.9) -> torch.Tensor:
    """(K, d) unit centres: for each cluster j, the mean of the top `keep` fraction of the n/K rows
    ranked highest by logit j (SIC's xi_c = 0.9 of n/K)."""
    n, k = logits.shape
    per = max(1, int(n / k * keep))
    top = logits.topk(min(per, n), dim=0).indices          # (per, K)
    return nn.functional.normalize(x[top].mean(0), dim=-1)


def semantic_centres(centres: torch.Tensor, vectors: torch.Tensor, nearest: int = 30) -> torch.Tensor:
    """(K, d) unit centres: the mean of the `nearest` nouns (rows of `vectors`) closest to each image
    centre (SIC's xi_a = 30)."""
    sims = centres @ nn.functional.normalize(vectors, dim=-1).T
    top = sims.topk(min(nearest, len(vectors)), dim=1).indices
    return nn.functional.normalize(vectors[top].mean(1), dim=-1)


def semantic_labels(x: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
    """Each row's pseudo-label: the semantic centre with the highest cosine."""
    return (nn.functional.normalize(x, dim=-1) @ semantic.T).argmax(-1)


def pseudo_labels(x: torch.Tensor, logits: torch.Tensor, vectors: torch.Tensor, keep: float = 0.9,
                  nearest: int = 30) -> torch.Tensor:
    """SIC's labels for rows x given the head's logits and the semantic space's vectors."""
    return semantic_labels(x, semantic_centres(image_centres(x, logits, keep), vectors, nearest))


def space_nouns(centres: torch.Tensor, vectors: torch.Tensor, per_centre: int) -> torch.Tensor:
    """Sorted indices of SIC's semantic space: the union over image centres (K, d) of the `per_centre`
    nouns (rows of `vectors`) with the highest cosine to each (gamma_r)."""
    sims = nn.functional.normalize(centres, dim=-1) @ nn.functional.normalize(vectors, dim=-1).T
    return sims.topk(min(per_centre, len(vectors)), dim=1).indices.flatten().unique()


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
