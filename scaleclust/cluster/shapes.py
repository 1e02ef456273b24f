"""Input checks shared by the clustering building blocks: a wrong shape fails with a message that
names the argument, its expected shape and the shape it got."""
from __future__ import annotations

import torch


def check_shape(name: str, t: object, expected: tuple[int | None, ...], spec: str) -> None:
    """Raise ValueError unless t is a tensor with len(expected) dimensions whose sizes equal the ints
    of `expected` (None: any size). spec names the dimensions for the message, e.g. "(b, K)"."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape {spec}, got {type(t).__name__}")
    if t.dim() != len(expected) or any(e is not None and s != e for s, e in zip(t.shape, expected)):
        sizes = "(" + ", ".join("?" if e is None else str(e) for e in expected) + ")"
        raise ValueError(f"{name} must have shape {spec} = {sizes}, got {tuple(t.shape)}")
