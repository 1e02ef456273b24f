"""TURTLE: a bilevel search for the labelling that linear classifiers fit best (Gadetsky et al., ICML 2024).

Task encoder over S representation spaces x = [x_1 | ... | x_S] (concatenated columns of widths
`dims`): one weight-normalised linear map per space, tau(x) = 1/S sum_s softmax(theta_s x_s), a
labelling distribution (b, K). Per outer step (one batch):
  inner: M Adam steps (lr inner_lr) fit one linear classifier w_s per space to the current labelling,
         CE(w_s x_s, stopgrad tau(x)), summed over spaces;
  outer: L = sum_s CE(stopgrad(w_s x_s), tau(x)) - gamma sum_s H(mean_batch softmax(theta_s x_s)).
This is the first-order approximation of the hypergradient, as in the authors' code: the inner fit is
not differentiated through, and the outer gradient reaches theta only through the labelling. The inner
classifiers are warm-started across outer steps (the authors' `--warm_start`; their default re-initialises
them every step: `warm_start=False` here). In a data-parallel loop each process keeps its own inner
classifiers, fitted on its own batches; only the task encoder's gradients are averaged.
Defaults are the reference's (gamma 10, M 10, Adam lr 1e-3 inside and out, batch 10k, 6000 steps).

Input scale: the reference trains on raw encoder features, whose norms run to tens; our embeddings are
unit rows, so at its settings (weight-normalised maps that start with norm ~0.6, Adam steps of 1e-3)
every labelling stayed nearly uniform (mean top probability 0.14-0.15 of 10) and TURTLE scored below
k-means on every labelled set. Each space's block is therefore multiplied by sqrt(its width), which
gives its coordinates unit mean square, for the task encoder and the inner classifiers alike: ACC
0.39/0.35/0.39 -> 0.60/0.58/0.65 on mnist5k, animals and digits8 at seed 0
(docs/measurements.md#methods-x-data-sets). The scale is a buffer of the encoder, saved with it,
though dims give it: an encoder saved before it existed has none, and is refused rather than read at
the wrong scale.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from scaleclust.cluster.method import saved_by_earlier, unwrap
from scaleclust.cluster.settings import TurtleConfig
from scaleclust.cluster.shapes import check_shape


def split_spaces(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """The per-space column blocks of rows x (b, sum(dims))."""
    check_shape("x", x, (None, sum(dims)), f"(b, sum(dims)={'+'.join(map(str, dims))})")
    return torch.split(x, list(dims), dim=1)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean_i -sum_c target_ic log softmax(logits_i)_c, for probability targets (b, K)."""
    check_shape("logits", logits, (None, None), "(b, K)")
    check_shape("target", target, tuple(logits.shape), "(b, K)")
    return -(target * torch.log_softmax(logits, dim=1)).sum(1).mean()


def mean_entropy(p: torch.Tensor) -> torch.Tensor:
    """H(mean_i p_i) of probabilities p (b, K): high when the batch spreads over clusters."""
    check_shape("p", p, (None, None), "(b, K)")
    mean = p.mean(0)
    return -(mean * torch.log(mean.clamp_min(torch.finfo(p.dtype).tiny))).sum()


class TaskEncoder(nn.Module):
    """One weight-normalised linear map per space (weight norm matters for TURTLE, say its authors).

    forward(x) gives log tau(x) (b, K): log of the mean over spaces of softmax(theta_s x_s), usable as
    logits (its argmax is the labelling's); forward(x, per_space=True) gives each space's log-softmax
    (S, b, K). Both go through forward so data-parallel wrappers see the call. x_s is space s's block
    of the row times `scale[s]` = sqrt(its width) (the module docstring)."""

    def __init__(self, dims: tuple[int, ...], k: int) -> None:
        super().__init__()
        self.dims = tuple(dims)
        self.maps = nn.ModuleList([weight_norm(nn.Linear(d, k)) for d in self.dims])
        self.register_buffer("scale", torch.tensor([math.sqrt(d) for d in self.dims]))

    def spaces(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each space's block of rows x, scaled: what the maps and the inner classifiers read."""
        return tuple(xs * s for xs, s in zip(split_spaces(x, self.dims), self.scale))

    def forward(self, x: torch.Tensor, per_space: bool = False) -> torch.Tensor:
        log_p = torch.stack([torch.log_softmax(m(xs), dim=1) for m, xs in zip(self.maps, self.spaces(x))])
        if per_space:
            return log_p
        return torch.logsumexp(log_p, dim=0) - math.log(len(self.dims))

    def load_state_dict(self, state_dict: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        """torch's, with a clear error for an encoder saved before its input was scaled."""
        if "scale" not in state_dict:
            raise saved_by_earlier("TURTLE task encoder", "which read unscaled rows")
        return super().load_state_dict(state_dict, *args, **kwargs)


class Turtle:
    """TURTLE as a `Method` over K clusters: one outer step of the task encoder per batch (the inner fit
    runs in `loss`). It needs no neighbours."""

    def __init__(self, config: TurtleConfig, k: int) -> None:
        if k < 2:
            raise ValueError(f"turtle needs k >= 2 clusters, got k={k}")
        if config.inner_steps < 1:
            raise ValueError(f"turtle needs inner_steps >= 1, got {config.inner_steps}")
        self.config, self.k = config, k
        self.steps = config.steps
        self.batch_size = config.batch_size
        self.neighbors = 0
        self.inner: nn.ModuleList | None = None
        self.inner_optimizer: torch.optim.Optimizer | None = None
        self._resume: dict = {}

    def dims(self, in_dim: int) -> tuple[int, ...]:
        """The space widths, checked against the embedding width."""
        dims = tuple(self.config.dims or (in_dim,))
        if sum(dims) != in_dim:
            raise ValueError(f"turtle dims {dims} sum to {sum(dims)}, but embeddings have {in_dim} columns")
        return dims

    def head(self, in_dim: int) -> TaskEncoder:
        return TaskEncoder(self.dims(in_dim), self.k)

    def optimizer(self, head: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(head.parameters(), lr=self.config.outer_lr)

    def _fresh_inner(self, dims: tuple[int, ...], device: torch.device) -> None:
        """New inner classifiers on `device`, or the ones a resumed checkpoint saved."""
        self.inner = nn.ModuleList([nn.Linear(d, self.k) for d in dims]).to(device)
        self.inner_optimizer = torch.optim.Adam(self.inner.parameters(), lr=self.config.inner_lr)
        state, self._resume = self._resume, {}
        if state and tuple(state["dims"]) == dims:
            self.inner.load_state_dict(state["inner"])
            self.inner_optimizer.load_state_dict(state["inner_optimizer"])  # moves its state to device

    def fit_inner(self, xs: tuple[torch.Tensor, ...], labelling: torch.Tensor) -> float:
        """M Adam steps of the per-space linear classifiers towards the (detached) labelling; returns
        the last inner loss."""
        dims = tuple(x.shape[1] for x in xs)
        if (not self.config.warm_start or self.inner is None
                or tuple(m.in_features for m in self.inner) != dims):
            self._fresh_inner(dims, xs[0].device)
        target = labelling.detach()
        xs = tuple(x.detach() for x in xs)
        with torch.enable_grad():
            for _ in range(self.config.inner_steps):
                loss = sum(soft_cross_entropy(w(x), target) for w, x in zip(self.inner, xs))
                self.inner_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.inner_optimizer.step()
        self.inner_optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def loss(self, head: nn.Module, x: torch.Tensor, step: int,
             neighbors: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        xs = unwrap(head).spaces(x)
        p = head(x, per_space=True).exp()                                 # (S, b, K)
        labelling = p.mean(0)
        inner = self.fit_inner(xs, labelling)
        with torch.no_grad():
            inner_logits = [w(xi) for w, xi in zip(self.inner, xs)]
        fit = sum(soft_cross_entropy(logits, labelling) for logits in inner_logits)
        entropy = sum(mean_entropy(ps) for ps in p)
        loss = fit - self.config.gamma * entropy
        return loss, {"loss": loss.item(), "fit": fit.item(), "entropy": entropy.item(), "inner": inner}

    def on_step(self, head: nn.Module, step: int) -> None:
        """Nothing to schedule: the inner classifiers are updated inside `loss`."""

    def state_dict(self) -> dict:
        """The inner classifiers and their optimizer, for a checkpoint (empty before the first step)."""
        if self.inner is None:
            return {}
        return copy.deepcopy({"inner": self.inner.state_dict(), "inner_optimizer": self.inner_optimizer.state_dict(),
                              "dims": [m.in_features for m in self.inner]})   # a snapshot, not live tensors

    def load_state_dict(self, state: dict) -> None:
        """Resume the inner classifiers saved by `state_dict`; they are rebuilt at the next step, on
        the batch's device (with warm_start=False there is nothing to resume)."""
        self.inner = self.inner_optimizer = None
        self._resume = dict(state) if self.config.warm_start else {}
