"""MLC / CPP: rate reduction on frozen embeddings with a doubly stochastic membership (Ding et al. 2023,
Chu et al. 2023), as a `Method` that any training loop can drive."""
from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from scaleclust.cluster.method import unwrap
from scaleclust.cluster.rate_reduction import coding_rate, compression_rate
from scaleclust.cluster.settings import MLCConfig
from scaleclust.cluster.sinkhorn import sinkhorn_membership
from scaleclust.cluster.spectral import spectral_cluster
from scaleclust.cluster.subspaces import SubspaceAssigner, fit_subspaces


class SubspaceClusterHead(nn.Module):
    """The MLC/CPP head: a shared MLP, then two L2-normalised linear heads.

    Z (subspace features) carries the rate-reduction geometry; C (cluster features) only feeds the
    membership matrix. Layout: Linear(D->h) BN ReLU Linear(h->h) ReLU, then Linear(h->d) twice.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
        )
        self.z_head = nn.Linear(hidden, out_dim)
        self.c_head = nn.Linear(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return (nn.functional.normalize(self.z_head(h), dim=-1),
                nn.functional.normalize(self.c_head(h), dim=-1))

    @torch.no_grad()
    def copy_z_to_c(self) -> None:
        """Start the cluster head from the subspace head (the end of MLC's warm-up)."""
        self.c_head.load_state_dict(self.z_head.state_dict())


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


DENSE_MAX_ROWS = 5000  # beyond this many rows the membership is a sparse kNN graph, never n x n
GB = 1 << 30


def membership_affinity(c: np.ndarray, config: MLCConfig) -> np.ndarray:
    """Symmetric affinity (n, n) for spectral clustering: MLC's Sinkhorn membership of the rows c."""
    pi = sinkhorn_membership(torch.as_tensor(c, dtype=torch.float64), config.eta, config.sinkhorn_iters).numpy()
    return (pi + pi.T) / 2


def knn_membership(c: np.ndarray, config: MLCConfig, neighbors: int) -> sp.csr_matrix:
    """The same membership restricted to each row's `neighbors` nearest rows (self included) by |cos|:
    the kernel exp(|c_i . c_j| / eta) on the symmetrised kNN graph, scaled to uniform marginals by the
    same number of Sinkhorn iterations, then symmetrised. Memory O(n * neighbors), no n x n matrix.
    Neighbours come from faiss inner-product search of c and -c (so anti-aligned rows, which |cos|
    counts as close, are found too): exact up to EXACT_KNN_ROWS rows, IVF beyond (see _knn)."""
    feats = np.ascontiguousarray(c, dtype=np.float32)
    n = len(feats)
    m = min(neighbors + 1, n)
    sims, ids = _knn(feats, np.concatenate([feats, -feats]), m)
    sims, ids = np.concatenate([sims[:n], sims[n:]], 1), np.concatenate([ids[:n], ids[n:]], 1)
    top = np.argsort(-sims, axis=1, kind="stable")[:, :m]
    sims, ids = np.take_along_axis(sims, top, 1), np.take_along_axis(ids, top, 1)
    rows = np.repeat(np.arange(n), m)
    kernel = sp.csr_matrix((np.exp((np.abs(sims.ravel()) - 1.0) / config.eta), (rows, ids.ravel())), shape=(n, n))
    kernel = kernel.maximum(kernel.T).tocsr()
    u = v = np.ones(n)
    for _ in range(config.sinkhorn_iters):
        u = 1.0 / np.maximum(kernel @ v, 1e-300)
        v = 1.0 / np.maximum(kernel.T @ u, 1e-300)
    pi = (sp.diags(u) @ kernel @ sp.diags(v)).tocsr()
    return ((pi + pi.T) * (n / 2)).tocsr()


EXACT_KNN_ROWS = 20_000


def _knn(base: np.ndarray, queries: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-m inner products of queries against base: exact search up to EXACT_KNN_ROWS rows, else an
    IVF-Flat index (nlist ~4 sqrt(n), trained on at most 64 rows per list, 16 lists probed), so the
    graph costs O(n^1.5 d) rather than O(n^2 d). Its misses only drop weak edges of the graph."""
    n, d = base.shape
    if n <= EXACT_KNN_ROWS:
        index = faiss.IndexFlatIP(d)
    else:
        nlist = int(4 * np.sqrt(n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        train = np.random.default_rng(0).choice(n, size=min(n, 64 * nlist), replace=False)
        index.train(base[np.sort(train)])
        index.nprobe = 16
    index.add(base)
    return index.search(queries, m)


def affinity(c: np.ndarray, config: MLCConfig, neighbors: int = 10,
             dense_max_rows: int = DENSE_MAX_ROWS) -> np.ndarray | sp.csr_matrix:
    """The membership affinity of a sample: dense up to dense_max_rows rows, a sparse kNN graph beyond."""
    return membership_affinity(c, config) if len(c) <= dense_max_rows else knn_membership(c, config, neighbors)


def assign_memory_bytes(rows: int, in_dim: int, config: MLCConfig, k: int, neighbors: int = 10,
                        dense_max_rows: int = DENSE_MAX_ROWS) -> int:
    """Peak memory of fitting the assigner on `rows` sampled rows, estimated from its largest arrays:
    the sample and its head features (float32), then either the dense float64 membership (its Sinkhorn
    temporaries, the symmetrised and the normalised copy: ~4 n^2 x 8 bytes) or the kNN graph (search
    results for c and -c, COO and CSR forms of kernel, transpose and Pi: ~40 bytes per candidate
    edge), the Lanczos basis (n x max(2k+1, 20) float64) and k-means on the (n, k) spectral embedding."""
    n = int(rows)
    features = n * (in_dim + 2 * config.out_dim) * 4 + 4 * 4096 * config.hidden * 4  # head runs in 4096-row batches
    if n <= dense_max_rows:
        graph = 4 * n * n * 8
    else:
        graph = 2 * n * (neighbors + 1) * 12 + 6 * 2 * n * (neighbors + 1) * 16
    solve = n * max(2 * k + 1, 20) * 8 + 4 * n * k * 8
    return features + graph + solve


def cluster_sample(head: nn.Module, x: torch.Tensor | np.ndarray, k: int, config: MLCConfig,
                   seed: int, neighbors: int = 10) -> np.ndarray:
    """The reference MLC/CPP clustering of one sample: spectral clustering of its membership Pi
    (dense up to DENSE_MAX_ROWS rows, a kNN graph beyond). Use it on a sample, never on all rows."""
    _, c = head_features(head, x)
    return spectral_cluster(affinity(c, config, neighbors), k, seed)


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
                 rank: int = 1, space: str = "c", neighbors: int = 10,
                 dense_max_rows: int = DENSE_MAX_ROWS) -> tuple[MLCAssigner, np.ndarray]:
    """Spectral-cluster a sample (the reference result), then fit one rank-`rank` subspace per cluster
    in the C (or Z) features; returns the assigner and the sample's spectral labels.

    Default rank 1 in C: the cluster's principal direction scored by |cos|, the same similarity the
    membership affinity uses; higher ranks fit the sample more closely but generalise worse once
    K * rank approaches d (measured on held-out rows). Samples above dense_max_rows rows use the
    sparse kNN membership (`neighbors` per row)."""
    if space not in ("z", "c"):
        raise ValueError(f"space must be 'z' or 'c', not {space!r}")
    z, c = head_features(head, x_sample)
    labels = spectral_cluster(affinity(c, config, neighbors, dense_max_rows), k, seed)
    feats = z if space == "z" else c
    return MLCAssigner(head, fit_subspaces(feats, labels, k, rank), space), labels
