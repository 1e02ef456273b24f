"""SCL's cluster-aware contrastive term on frozen embeddings (Huang & Gong, BMVC 2022).

No official code exists and only the paper's description was available here, so this is our reading
of it, on frozen embeddings (no image augmentations, hence no instance-level view pairs):

- Features: f = normalise(g(x)), a projection g of the frozen embedding; the caller's head gives f
  for the batch rows and for each row's m nearest neighbours (neighbours travel as embeddings).
- Pseudo-clusters: one label per batch row (the cluster head's argmax, or -1 for a row that should
  take no part).
- Consistency condition (the consensus of visual similarity and cluster boundaries): neighbour n of
  row i counts as a positive of i only when n's predicted cluster equals i's (`consistent_neighbours`).
- Loss, SupCon-style with temperature tau, for each labelled anchor i with positives
  P(i) = {batch rows j != i of i's cluster} + {i's consistent neighbours} and
  negatives N(i) = {batch rows of another cluster}:
      L_i = -1/|P(i)| sum_{p in P(i)} log( exp(f_i.f_p / tau) / sum_{a in P(i) + N(i)} exp(f_i.f_a / tau) )
  averaged over the anchors that have at least one positive. Unlabelled rows are neither anchors,
  positives nor negatives.
"""
from __future__ import annotations

import torch

from scaleclust.cluster.shapes import check_shape


def consistent_neighbours(labels: torch.Tensor, neighbour_labels: torch.Tensor) -> torch.Tensor:
    """bool (b, m): neighbour n of row i shares i's (non-negative) cluster label."""
    check_shape("labels", labels, (None,), "(b,)")
    check_shape("neighbour_labels", neighbour_labels, (labels.shape[0], None), "(b, m)")
    return (neighbour_labels == labels[:, None]) & (labels[:, None] >= 0)


def cluster_contrastive_loss(f: torch.Tensor, labels: torch.Tensor, neighbours: torch.Tensor | None = None,
                             neighbour_mask: torch.Tensor | None = None, temperature: float = 0.1) -> torch.Tensor:
    """The SupCon-style cluster-aware loss of the module docstring: a scalar.

    f (b, p): unit projected features of the batch; labels (b,): pseudo-clusters (-1: left out);
    neighbours (b, m, p): unit projected features of each row's neighbours; neighbour_mask (b, m): which
    neighbours are positives (default all; pass `consistent_neighbours(...)` for SCL's condition).
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
    if neighbours is not None:
        check_shape("neighbours", neighbours, (b, None, p), "(b, m, p)")
        m = neighbours.shape[1]
        if neighbour_mask is None:
            neighbour_mask = torch.ones(b, m, dtype=torch.bool, device=f.device)
        check_shape("neighbour_mask", neighbour_mask, (b, m), "(b, m)")
        nbr_pos = neighbour_mask.bool() & labelled[:, None]
        pos.append(nbr_pos)
        cand.append(nbr_pos)
        logits.append(torch.einsum("bp,bmp->bm", f, neighbours) / temperature)
    pos_mask, cand_mask, s = torch.cat(pos, 1), torch.cat(cand, 1), torch.cat(logits, 1)
    anchors = pos_mask.any(1)
    if not anchors.any():
        return 0.0 * f.sum()                                               # in the graph, no gradient
    # Only anchors' rows: each has a positive among its candidates, so every logsumexp is finite.
    pos_mask, cand_mask, s = pos_mask[anchors], cand_mask[anchors], s[anchors]
    log_denom = torch.logsumexp(s.masked_fill(~cand_mask, -torch.inf), dim=1, keepdim=True)
    log_prob = (s - log_denom).masked_fill(~pos_mask, 0.0)
    return (-log_prob.sum(1) / pos_mask.sum(1)).mean()
