"""What a training loop needs from a clustering method: a head, its loss terms, and step hooks.

The single-process loop (`local_fit.fit`) and the distributed Ray Train loop drive any method through
this interface, so a method is written once. MLC is the first; SCAN/SIC/SPICE follow the same shape.
"""
from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class Method(Protocol):
    """A clustering method trained on frozen embeddings."""

    steps: int        # optimizer steps in a fit (counted in steps, never epochs)
    batch_size: int   # rows per step (per process, for data-parallel loops)

    def head(self, in_dim: int) -> nn.Module:
        """A fresh, untrained head for embeddings of width in_dim."""

    def optimizer(self, head: nn.Module) -> torch.optim.Optimizer:
        """The optimizer over the head's parameters (its groups carry per-part weight decay)."""

    def loss(self, head: nn.Module, x: torch.Tensor, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one batch at 0-based step `step`, and scalar stats to log."""

    def on_step(self, head: nn.Module, step: int) -> None:
        """Hook run after optimizer step `step` has been applied (schedules, weight copies)."""


def unwrap(head: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or similar) wrapper, or the head itself."""
    return getattr(head, "module", head)
