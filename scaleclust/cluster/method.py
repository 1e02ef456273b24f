"""What a training loop needs from a clustering method: a head, its loss terms, and step hooks.

The single-process loop (`local_fit.fit`) and the distributed Ray Train loop drive any method through
this interface, so a method is written once. A method with `neighbors = m > 0` gets, with each batch of
rows x (b, d), the embeddings of every row's m nearest neighbours (b, m, d) from the index; the loops
fetch them once per fitted row. A trained method becomes an `Assigner` for the assign stage.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import nn


class Method(Protocol):
    """A clustering method trained on frozen embeddings."""

    steps: int        # optimizer steps in a fit (counted in steps, never epochs)
    batch_size: int   # rows per step (per process, for data-parallel loops)
    neighbors: int    # neighbours' embeddings needed per row (0: none)

    def head(self, in_dim: int) -> nn.Module:
        """A fresh, untrained head for embeddings of width in_dim."""

    def optimizer(self, head: nn.Module) -> torch.optim.Optimizer:
        """The optimizer over the head's parameters (its groups carry per-part weight decay)."""

    def loss(self, head: nn.Module, x: torch.Tensor, step: int,
             neighbors: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of one batch at 0-based step `step` (rows x, and their neighbours' embeddings when
        self.neighbors > 0), and scalar stats to log ("loss" at least)."""

    def on_step(self, head: nn.Module, step: int) -> None:
        """Hook run after optimizer step `step` has been applied (schedules, weight copies)."""


class Assigner(Protocol):
    """A trained method applied to any rows, e.g. one shard at a time in the assign stage."""

    def assign(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cluster int32, confidence float32 in [0, 1], second-choice cluster int32) per row."""


def unwrap(head: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or similar) wrapper, or the head itself."""
    return getattr(head, "module", head)


def saved_by_earlier(what: str, change: str) -> ValueError:
    """The error for a head whose saved state an earlier scaleclust wrote in a layout this one cannot
    read (`change`: what differed). The fit's checkpoints would resume the old state, so they go too."""
    return ValueError(f"this {what} was saved by an earlier scaleclust, {change}; remove the run directory's "
                      f"model/ folder (with its train/ checkpoints, which would resume it) and fit again")
