"""Growing a trained cluster head by new outputs, for new concepts found at a refit (plain torch).

A head's last layer is linear over some features f(x) (the trunk's output for SCAN/SPICE/SIC/SCL
heads, each space's scaled slice of x for TURTLE). A new cluster's output row in every
head is the unit prototype of its group of novel rows in that feature space (the normalised mean of
their features, centred on the known rows' mean when those are given: features after a ReLU share a
large common part, which would point every new row at the old clusters too), scaled to the mean norm of the head's existing rows, so its logits live on the same
scale. Its bias sits halfway between what the group's rows need to prefer it over their best old
output (the 0.9 quantile of best old logit - new logit) and what the known rows allow before they
would (the 0.1 quantile of the same over the non-novel rows): a cut between the two populations on the
head's own logit scale, which an absolute margin would not be (an untrained head's logits differ by
hundredths, a trained one's by tens). The new output thus starts where its concept is, and training
refines it with the rest. Old outputs are unchanged. Where the head's features no longer tell the new
concept from an old one (a trunk trained on the old concepts only can merge them), the start is weaker
and the refit's training has to pull them apart.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

MARGIN = 1.0  # without known rows: logit by which a group's rows prefer their new output, on average


def _shortfall(weight: torch.Tensor, bias: torch.Tensor, feats: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(r, n): best old logit minus each new output's logit (bias 0) for rows with features feats."""
    return (feats @ weight.T + bias).max(dim=1, keepdim=True).values - feats @ rows.T


def new_outputs(weight: torch.Tensor, bias: torch.Tensor, feats: torch.Tensor, groups: torch.Tensor, n: int,
                known: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows (n, f) and biases (n,) of n new outputs of the linear layer (weight (k, f), bias (k,)) from
    the features (r, f) of novel rows in groups 0..n-1 (every group holds a row) and those of known
    rows (the rows the old clusters accept), which the new outputs should leave alone."""
    feats = feats.to(weight.dtype)
    known = None if known is None or len(known) == 0 else known.to(weight.dtype)
    counts = torch.bincount(groups, minlength=n).to(weight.dtype).clamp_min(1)
    means = torch.zeros(n, feats.shape[1], dtype=weight.dtype).index_add_(0, groups, feats) / counts[:, None]
    if known is not None:  # centred on the known rows: what sets the group apart, not what all rows share
        means = means - known.mean(dim=0)
    rows = F.normalize(means, dim=1) * weight.norm(dim=1).mean()
    need = _shortfall(weight, bias, feats, rows)
    biases = torch.empty(n, dtype=weight.dtype)
    allow = None if known is None else _shortfall(weight, bias, known, rows)
    for g in range(n):
        mine = need[groups == g, g]
        if allow is None:
            biases[g] = mine.mean() + MARGIN
        else:
            biases[g] = (torch.quantile(mine, 0.9) + torch.quantile(allow[:, g], 0.1)) / 2
    return rows, biases


def _grow_blocks(weight: torch.Tensor, bias: torch.Tensor, heads: int, feats: torch.Tensor, groups: torch.Tensor,
                 n: int, known: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A (heads * k, f) layer whose rows are head-major (row h * k + c) grown to heads * (k + n) rows."""
    k = weight.shape[0] // heads
    ws, bs = [], []
    for h in range(heads):
        w, b = weight[h * k:(h + 1) * k], bias[h * k:(h + 1) * k]
        rows, biases = new_outputs(w, b, feats, groups, n, known)
        ws += [w, rows]
        bs += [b, biases]
    return torch.cat(ws), torch.cat(bs)


@torch.no_grad()
def grow_state(head: nn.Module, x_novel: torch.Tensor, groups: torch.Tensor, n: int,
               x_known: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The state dict of `head` (a trained ClusterHeads, ProjectedHeads or TaskEncoder over k clusters)
    with n more clusters, seeded from the novel rows x_novel (r, d) in groups 0..n-1, kept off the
    known rows x_known (the rows the old clusters accept; optional): loadable into a fresh head of the
    same method over k + n clusters. The head is read in eval mode (BatchNorm's running statistics),
    as it assigns."""
    state = {name: value.clone() for name, value in head.state_dict().items()}
    if n <= 0:
        return state
    training = head.training
    head.eval()
    x = x_novel.to(torch.float32)
    x_known = None if x_known is None else x_known.to(torch.float32)
    groups = groups.to(torch.int64)
    try:
        if hasattr(head, "maps"):  # TURTLE's task encoder: one weight-normalised linear map per (scaled) space
            spaces, known = head.spaces(x), None if x_known is None else head.spaces(x_known)
            for s, layer in enumerate(head.maps):
                rows, biases = new_outputs(layer.weight, layer.bias, spaces[s], groups, n,
                                           None if known is None else known[s])
                prefix = f"maps.{s}."
                state[prefix + "parametrizations.weight.original0"] = torch.cat(
                    [state[prefix + "parametrizations.weight.original0"], rows.norm(dim=1, keepdim=True)])
                state[prefix + "parametrizations.weight.original1"] = torch.cat(
                    [state[prefix + "parametrizations.weight.original1"], rows])
                state[prefix + "bias"] = torch.cat([state[prefix + "bias"], biases])
            return state
        # SCAN, SPICE, SIC, SCL: heads on the trunk
        weight, bias = _grow_blocks(head.heads.weight, head.heads.bias, head.n_heads, head.trunk(x), groups, n,
                                    None if x_known is None else head.trunk(x_known))
        state["heads.weight"], state["heads.bias"] = weight, bias
        return state
    finally:
        head.train(training)
