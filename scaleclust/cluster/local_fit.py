"""Single-process training of any `Method` on an in-memory tensor (tests, benchmarks, small data)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from scaleclust.cluster.method import Method


def fit(x: torch.Tensor, method: Method, seed: int,
        log: Callable[[int, dict[str, float]], None] | None = None,
        neighbors: torch.Tensor | None = None) -> nn.Module:
    """Train method.head on rows of x for method.steps steps of method.batch_size rows (fewer when x
    is smaller), drawing batches by shuffled passes over x; returns the head in eval mode.
    `neighbors` (n, m, d): the embeddings of each row's neighbours, for methods with neighbors > 0."""
    if method.neighbors and (neighbors is None or len(neighbors) != len(x)):
        raise ValueError(f"this method needs the embeddings of {method.neighbors} neighbours per row (n, m, d)")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    head = method.head(x.shape[1])
    optimizer = method.optimizer(head)
    batch = min(method.batch_size, len(x))
    order, cursor = torch.randperm(len(x), generator=generator), 0
    head.train()
    for step in range(method.steps):
        if cursor + batch > len(x):
            order, cursor = torch.randperm(len(x), generator=generator), 0
        idx, cursor = order[cursor:cursor + batch], cursor + batch
        near = neighbors[idx].float() if method.neighbors else None
        loss, stats = method.loss(head, x[idx], step, near)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.on_step(head, step)
        if log is not None:
            log(step, stats)
    return head.eval()
