"""MLC / CPP: rate reduction on frozen embeddings with a doubly stochastic membership (Ding et al. 2023,
Chu et al. 2023), as a `Method` that any training loop can drive."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from scaleclust.cluster.heads import SubspaceClusterHead
from scaleclust.cluster.method import unwrap
from scaleclust.cluster.rate_reduction import coding_rate, compression_rate
from scaleclust.cluster.sinkhorn import sinkhorn_membership
from scaleclust.cluster.spectral import spectral_cluster
from scaleclust.cluster.subspaces import SubspaceAssigner, fit_subspaces


@dataclass(frozen=True)
class MLCConfig:
    """MLC hyper-parameters (the CIFAR recipe of ALGORITHMS.md, scaled down). Defaults: the settings
    benchmarked in README, which train a demo-size sample in minutes on a CPU; the recipe's own
    (hidden 4096, out_dim 128, batch_size 1024; ImageNet: hidden 2048, out_dim 1024, eta 0.12,
    warmup_steps 2000) suit GPUs. Counted in steps, not epochs. The pipeline builds this from the
    validated `cluster.mlc` section (scaleclust.config.MLCSettings), which keeps the same defaults."""

    hidden: int = 512
    out_dim: int = 32
    eps2: float = 0.1
    eta: float = 0.175
    sinkhorn_iters: int = 5
    gamma: float = 1.0
    pi_reg: float = 0.05
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_c: float = 5e-3
    batch_size: int = 512
    steps: int = 300
    warmup_steps: int = 50


class MLC:
    """Loss = -R(Z) + gamma Rc(Z, Pi) + pi_reg/2 ||Pi||_F^2 with Pi = b Sinkhorn(|C C^T|).

    For the first warmup_steps only -R(Z) is optimised; then the Z head is copied into the C head.
    """

    def __init__(self, config: MLCConfig) -> None:
        self.config = config
        self.steps = config.steps
        self.batch_size = config.batch_size
        self.neighbors = 0

    def head(self, in_dim: int) -> SubspaceClusterHead:
        return SubspaceClusterHead(in_dim, self.config.hidden, self.config.out_dim)

    def optimizer(self, head: nn.Module) -> torch.optim.Optimizer:
        """SGD with momentum; the C head gets its own (larger) weight decay."""
        cfg = self.config
        c_params = list(unwrap(head).c_head.parameters())
        c_ids = {id(p) for p in c_params}
        rest = [p for p in head.parameters() if id(p) not in c_ids]
        return torch.optim.SGD([{"params": rest, "weight_decay": cfg.weight_decay},
                                {"params": c_params, "weight_decay": cfg.weight_decay_c}],
                               lr=cfg.lr, momentum=cfg.momentum)

    def loss(self, head: nn.Module, x: torch.Tensor, step: int,
             neighbors: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.config
        z, c = head(x)
        rate = coding_rate(z, cfg.eps2)
        if step < cfg.warmup_steps:
            # C joins the graph with weight 0 so data-parallel wrappers see every parameter used.
            return -rate + 0.0 * c.sum(), {"loss": -rate.item(), "rate": rate.item()}
        pi = sinkhorn_membership(c, cfg.eta, cfg.sinkhorn_iters)
        compress = compression_rate(z, pi, cfg.eps2)
        reg = 0.5 * cfg.pi_reg * pi.square().sum()
        loss = -rate + cfg.gamma * compress + reg
        return loss, {"loss": loss.item(), "rate": rate.item(), "compress": compress.item(), "pi_reg": reg.item()}

    def on_step(self, head: nn.Module, step: int) -> None:
        if step + 1 == self.config.warmup_steps:
            unwrap(head).copy_z_to_c()


@torch.no_grad()
def head_features(head: nn.Module, x: torch.Tensor | np.ndarray, batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Z and C of every row, in eval mode (BatchNorm running statistics) and in batches: float32
    arrays (n, d). The head's train/eval mode is restored afterwards."""
    module = unwrap(head)
    training = module.training
    module.eval()
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    parts = [module(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    module.train(training)
    return (torch.cat([p[0] for p in parts]).numpy(), torch.cat([p[1] for p in parts]).numpy())


def membership_affinity(c: np.ndarray, config: MLCConfig) -> np.ndarray:
    """Symmetric affinity (n, n) for spectral clustering: MLC's Sinkhorn membership of the rows c."""
    pi = sinkhorn_membership(torch.as_tensor(c, dtype=torch.float64), config.eta, config.sinkhorn_iters).numpy()
    return (pi + pi.T) / 2


def cluster_sample(head: nn.Module, x: torch.Tensor | np.ndarray, k: int, config: MLCConfig,
                   seed: int) -> np.ndarray:
    """The reference MLC/CPP clustering of one sample: spectral clustering of its membership Pi.
    Quadratic in the sample size: use it on a sample (<= ~10k rows), never on all rows."""
    _, c = head_features(head, x)
    return spectral_cluster(membership_affinity(c, config), k, seed)


@dataclass(frozen=True)
class MLCAssigner:
    """Assigns any rows: the trained head maps them to features, nearest cluster subspace decides."""

    head: nn.Module
    subspaces: SubspaceAssigner
    space: str = "c"

    def assign(self, x: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cluster int32, confidence float32, second-choice cluster int32) per row of embeddings x."""
        z, c = head_features(self.head, x)
        return self.subspaces.assign(z if self.space == "z" else c)


def fit_assigner(head: nn.Module, x_sample: torch.Tensor | np.ndarray, k: int, config: MLCConfig, seed: int,
                 rank: int = 1, space: str = "c") -> tuple[MLCAssigner, np.ndarray]:
    """Spectral-cluster a sample (the reference result), then fit one rank-`rank` subspace per cluster
    in the C (or Z) features; returns the assigner and the sample's spectral labels.

    Default rank 1 in C: the cluster's principal direction scored by |cos|, the same similarity the
    membership affinity uses; higher ranks fit the sample more closely but generalise worse once
    K * rank approaches d (measured on held-out rows)."""
    if space not in ("z", "c"):
        raise ValueError(f"space must be 'z' or 'c', not {space!r}")
    z, c = head_features(head, x_sample)
    labels = spectral_cluster(membership_affinity(c, config), k, seed)
    feats = z if space == "z" else c
    return MLCAssigner(head, fit_subspaces(feats, labels, k, rank), space), labels
