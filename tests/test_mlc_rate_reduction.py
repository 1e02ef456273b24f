"""Rate-reduction terms: the chunked exact Rc against the literal formula, R's two sides, Sinkhorn."""
import pytest
import torch

from scaleclust.cluster import rate_reduction
from scaleclust.cluster.rate_reduction import coding_rate, compression_rate, compression_rate_naive
from scaleclust.cluster.sinkhorn import sinkhorn_membership


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


@pytest.mark.parametrize("b,d,chunk_elements", [(48, 12, 2**24), (48, 12, 48 * 12 * 5), (20, 32, 20 * 32 * 3)])
def test_compression_rate_matches_naive_value_and_gradients(b, d, chunk_elements, monkeypatch):
    monkeypatch.setattr(rate_reduction, "CHUNK_ELEMENTS", chunk_elements)  # several chunks, uneven tail
    z = unit_rows(b, d, 0).requires_grad_()
    c = unit_rows(b, 6, 1).requires_grad_()
    pi = sinkhorn_membership(c, eta=0.175, iters=5)
    fast, naive = compression_rate(z, pi, 0.1), compression_rate_naive(z, pi, 0.1)
    assert fast.item() == pytest.approx(naive.item(), abs=1e-4)
    grads_fast = torch.autograd.grad(fast, (z, c), retain_graph=True)
    grads_naive = torch.autograd.grad(naive, (z, c))
    for gf, gn in zip(grads_fast, grads_naive):
        assert torch.allclose(gf, gn, atol=1e-4)


@pytest.mark.parametrize("b,d", [(40, 8), (8, 40)])
def test_coding_rate_uses_either_side_of_the_identity(b, d):
    z = unit_rows(b, d, 4)
    direct = 0.5 * torch.logdet(torch.eye(d, dtype=z.dtype) + d / (b * 0.1) * z.T @ z)
    assert coding_rate(z, 0.1).item() == pytest.approx(direct.item(), rel=1e-10)


def test_sinkhorn_membership_is_doubly_stochastic():
    c = unit_rows(256, 16, 5)
    for iters, tol in [(5, 1e-2), (50, 1e-6)]:
        pi = sinkhorn_membership(c, eta=0.12, iters=iters)
        assert pi.shape == (256, 256) and bool((pi >= 0).all())
        assert torch.allclose(pi.sum(0), torch.ones(256, dtype=pi.dtype), atol=1e-9)
        assert torch.allclose(pi.sum(1), torch.ones(256, dtype=pi.dtype), atol=tol)
