"""Doubly stochastic membership from cluster features (MLC's Pi), by log-domain Sinkhorn."""
from __future__ import annotations

import math

import torch


def sinkhorn_membership(c: torch.Tensor, eta: float, iters: int) -> torch.Tensor:
    """Pi = b * Sinkhorn_eta(|C C^T|) for unit rows c (b, d): entropic transport with uniform marginals.

    Works in log space so small eta never under/overflows, and stays differentiable (gradients reach
    C through the iterations). Each iteration fixes rows then columns, so columns sum to exactly 1 and
    rows to 1 up to the convergence of `iters` steps (the kernel is symmetric: it converges fast).
    """
    b = c.shape[0]
    log_k = (c @ c.T).abs() / eta
    log_marginal = -math.log(b)
    log_v = torch.zeros(b, dtype=c.dtype, device=c.device)
    log_u = log_v
    for _ in range(iters):
        log_u = log_marginal - torch.logsumexp(log_k + log_v[None, :], dim=1)
        log_v = log_marginal - torch.logsumexp(log_k + log_u[:, None], dim=0)
    return b * torch.exp(log_u[:, None] + log_k + log_v[None, :])
