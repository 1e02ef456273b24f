"""Coding rates of the rate-reduction objective (MCR^2 / MLC).

Rows of z (b, d) are samples. R(Z) is the coding rate of the whole batch; Rc(Z, Pi) the rate after
splitting it by the soft memberships Pi (rows j of Pi weight the samples of group j):

    R  = 1/2 logdet(I + d/(b eps2) Z^T Z)
    Rc = sum_j n_j/(2b) logdet(I + d/(n_j eps2) Z^T Diag(Pi_j) Z),   n_j = <Pi_j, 1>

`compression_rate` is exact and never builds the (b, d, d) or (b, d, b) stacks that the formula
suggests: it forms the d x d matrices of a few groups at a time, takes their logdets by batched
Cholesky, and has a hand-written backward that recomputes them chunk by chunk, so memory is one
chunk of work whatever b is. `compression_rate_naive` is the literal formula, kept as a test oracle
and benchmark reference only.
"""
from __future__ import annotations

import torch

# Elements (of the (chunk, b, d) intermediate) processed at once; 2**24 floats = 64 MiB in float32.
CHUNK_ELEMENTS = 2**24


def logdet_spd(a: torch.Tensor) -> torch.Tensor:
    """logdet of (a batch of) symmetric positive definite matrices, by Cholesky."""
    return 2.0 * torch.linalg.cholesky(a).diagonal(dim1=-2, dim2=-1).log().sum(-1)


def coding_rate(z: torch.Tensor, eps2: float) -> torch.Tensor:
    """R(Z) = 1/2 logdet(I + d/(b eps2) Z^T Z), on whichever of the d x d / b x b sides is smaller."""
    b, d = z.shape
    gram = z.T @ z if d <= b else z @ z.T
    eye = torch.eye(gram.shape[0], dtype=z.dtype, device=z.device)
    return 0.5 * logdet_spd(eye + (d / (b * eps2)) * gram)


def _group_matrices(z: torch.Tensor, pi: torch.Tensor, eps2: float) -> torch.Tensor:
    """I + d/(n_j eps2) Z^T Diag(pi_j) Z for the rows j of pi (a chunk): (len(pi), d, d)."""
    d = z.shape[1]
    scale = d / (pi.sum(1) * eps2)
    weighted = z.T[None] * (pi * scale[:, None])[:, None, :]          # (chunk, d, b)
    return torch.eye(d, dtype=z.dtype, device=z.device) + weighted @ z


def _chunks(z: torch.Tensor, m: int) -> tuple[range, int]:
    """Chunk starts over m groups and the chunk length, sized to CHUNK_ELEMENTS."""
    step = max(1, CHUNK_ELEMENTS // (z.shape[0] * z.shape[1]))
    return range(0, m, step), step


class _CompressionRate(torch.autograd.Function):
    """Rc(Z, Pi) with an analytic backward, so no per-group matrix outlives its chunk.

    With A_j the group matrix and n_j = <Pi_j, 1>, and since n_j/(2b) * d/(n_j eps2) = d/(2b eps2):
      dRc/dz_i     = d/(b eps2) * sum_j Pi_ji A_j^{-1} z_i
      dRc/dPi_ji   = d/(2b eps2) z_i^T A_j^{-1} z_i + (logdet A_j - d + tr A_j^{-1}) / (2b)
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, pi: torch.Tensor, eps2: float) -> torch.Tensor:
        starts, step = _chunks(z, pi.shape[0])
        logdets = torch.cat([logdet_spd(_group_matrices(z, pi[s:s + step], eps2)) for s in starts])
        ctx.save_for_backward(z, pi, logdets)
        ctx.eps2 = eps2
        return (pi.sum(1) * logdets).sum() / (2 * z.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        z, pi, logdets = ctx.saved_tensors
        b, d = z.shape
        eps2 = ctx.eps2
        grad_z = torch.zeros_like(z)
        grad_pi = torch.empty_like(pi)
        starts, step = _chunks(z, pi.shape[0])
        for s in starts:
            p = pi[s:s + step]
            inv = torch.cholesky_inverse(torch.linalg.cholesky(_group_matrices(z, p, eps2)))
            solved = z[None] @ inv                                    # (chunk, b, d): A_j^{-1} z_i
            grad_z += torch.einsum("jb,jbd->bd", p, solved) * (d / (b * eps2))
            quad = (solved * z[None]).sum(-1)                         # z_i^T A_j^{-1} z_i
            trace = inv.diagonal(dim1=-2, dim2=-1).sum(-1)
            const = (logdets[s:s + step] - d + trace) / (2 * b)
            grad_pi[s:s + step] = quad * (d / (2 * b * eps2)) + const[:, None]
        return grad * grad_z, grad * grad_pi, None


def compression_rate(z: torch.Tensor, pi: torch.Tensor, eps2: float) -> torch.Tensor:
    """Rc(Z, Pi), exact, in memory bounded by one chunk (see the module docstring)."""
    return _CompressionRate.apply(z, pi, eps2)


def compression_rate_naive(z: torch.Tensor, pi: torch.Tensor, eps2: float) -> torch.Tensor:
    """Rc(Z, Pi) exactly as written, through (b, d, b) and (b, d, d) stacks: test oracle and benchmark
    reference only, never for training (4 GB and ~1e12 FLOP per step at b = d = 1024)."""
    b, d = z.shape
    n = pi.sum(1)
    w = z.T                                                             # (d, b): columns are samples
    stacks = (w[None] * pi[:, None, :]) @ w.T                           # (b, d, d) via (b, d, b)
    eye = torch.eye(d, dtype=z.dtype, device=z.device)
    logdets = torch.logdet(eye + (d / (n * eps2))[:, None, None] * stacks)
    return (n * logdets).sum() / (2 * b)
