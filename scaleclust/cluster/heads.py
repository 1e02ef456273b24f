"""What every multi-head method trained on neighbours shares (SCAN, SPICE, SIC, SCL): `heads` cluster
heads on one trunk, the recipe's common part (Adam, counted in steps), the label-free choice of the head
with the lowest loss, and assigning rows with the chosen head."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from scaleclust.cluster.choice import top_two
from scaleclust.cluster.method import unwrap
from scaleclust.cluster.shapes import check_shape
from scaleclust.cluster.settings import HeadsConfig


class ClusterHeads(nn.Module):
    """`heads` classifiers over K clusters on a shared trunk: Linear(D->h) BN ReLU (hidden > 0), or
    none (linear heads on the embeddings). forward: (b, D) -> logits (heads, b, K)."""

    def __init__(self, in_dim: int, k: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.trunk = (nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
                      if hidden > 0 else nn.Identity())
        self.heads = nn.Linear(hidden if hidden > 0 else in_dim, heads * k)
        self.k, self.n_heads = k, heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.trunk(x)).view(len(x), self.n_heads, self.k).transpose(0, 1)


class HeadsMethod:
    """The shared part of the multi-head methods trained on neighbours (SCAN, SPICE): `heads` cluster
    heads on one trunk, Adam, `steps` + `self_label_steps` steps, `neighbors` per row."""

    def __init__(self, config: HeadsConfig, k: int) -> None:
        self.config, self.k = config, k
        self.steps = config.steps + config.self_label_steps
        self.batch_size = config.batch_size
        self.neighbors = config.neighbors

    def head(self, in_dim: int) -> ClusterHeads:
        return ClusterHeads(in_dim, self.k, self.config.heads, self.config.hidden)

    def optimizer(self, head: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(head.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)

    def on_step(self, head: nn.Module, step: int) -> None:
        """No schedule: nothing to do between steps."""


class OneHead(nn.Module):
    """Any model giving logits (b, K), e.g. TURTLE's task encoder, seen as a one-head cluster model
    (logits (1, b, K), attribute k): the shape `HeadAssigner` assigns with."""

    def __init__(self, module: nn.Module, k: int) -> None:
        super().__init__()
        self.inner, self.k = module, k  # not `module`: unwrap() takes that for a DDP wrapper's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).unsqueeze(0)


@torch.no_grad()
def neighbor_labels(head: nn.Module, neighbors: torch.Tensor) -> torch.Tensor:
    """Predicted labels of every row's neighbours, from their embeddings (b, m, d), by the head in eval
    mode (its mode is restored): int64 (b, m), or (H, b, m) for a head whose output is (H, n, K)."""
    check_shape("neighbors", neighbors, (None, None, None), "(b, m, d)")
    b, m, d = neighbors.shape
    module = unwrap(head)
    training = module.training
    module.eval()
    try:
        logits = module(neighbors.reshape(b * m, d))
    finally:
        module.train(training)
    if not isinstance(logits, torch.Tensor) or logits.dim() not in (2, 3) or logits.shape[-2] != b * m:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"head must map (n, d) to logits (n, K) or (H, n, K); for n={b * m} it gave {got}")
    return logits.argmax(-1).reshape(*logits.shape[:-2], b, m)


def select_head(stats: list[dict[str, float]], heads: int) -> int:
    """The head with the lowest mean SCAN loss over the given steps' stats (label-free selection)."""
    means = [float(np.mean([s[f"head{h}"] for s in stats])) for h in range(heads)]
    return int(np.argmin(means))


@dataclass(frozen=True)
class HeadAssigner:
    """Assigns any rows with one head of a trained ClusterHeads: the argmax cluster, its softmax
    probability at `temperature` as confidence (cluster.calibration's label-free temperature, recorded
    in model.json; 1 for the raw softmax), and the runner-up."""

    head: nn.Module
    index: int
    temperature: float = 1.0

    @torch.no_grad()
    def logits(self, x: torch.Tensor | np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """The head's logits (n, k) for rows x, in eval mode."""
        module = unwrap(self.head)
        training = module.training
        module.eval()
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        parts = [module(x[i:i + batch_size])[self.index] for i in range(0, len(x), batch_size)]
        module.train(training)
        return torch.cat(parts).numpy() if parts else np.zeros((0, module.k), np.float32)

    def assign(self, x: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cluster int32, confidence float32, second-choice cluster int32) per row (choice.top_two)."""
        return top_two(self.logits, x, self.temperature)
