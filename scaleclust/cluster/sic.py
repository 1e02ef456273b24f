"""SIC's semantic pseudo-labels (Cai et al. 2023) on plain tensors: image centres from the head's most
confident rows, semantic centres from the nouns of the semantic space nearest to them, and each row's
label = the semantic centre it is closest to. The semantic space's vectors live in the image-embedding
space (scaleclust.semantic), so nouns and rows compare by cosine.
"""
from __future__ import annotations

import torch
from torch import nn


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
