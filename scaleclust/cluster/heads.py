"""Heads trained on frozen embeddings."""
from __future__ import annotations

import torch
from torch import nn


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
