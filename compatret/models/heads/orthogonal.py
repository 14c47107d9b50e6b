"""Learnable orthogonal map (OCA, Ricci et al. 2024) that rotates features without distorting them."""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.nn.utils.parametrizations import orthogonal


class OrthogonalProjection(nn.Module):
    """Square linear map constrained to the orthogonal group.

    Being orthogonal, it preserves norms and inner products, so it can re-orient the
    new feature space towards the old one (or add room for new classes) without
    degrading what the backbone learned. Starts at the identity so a freshly added
    head is a no-op.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        # orthogonal() returns the Linear it was given (parametrized in place); torch types it Module
        self.linear = cast(nn.Linear, orthogonal(nn.Linear(dim, dim, bias=False)))
        with torch.no_grad():
            self.linear.weight = torch.eye(dim)

    @property
    def matrix(self) -> torch.Tensor:
        """The current ``[dim, dim]`` orthogonal matrix ``W`` (output = ``x @ W.T``)."""
        return self.linear.weight

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Rotate ``[B, dim]`` features; norms are unchanged."""
        if features.shape[-1] != self.dim:
            raise ValueError(f"expected feature dim {self.dim}, got {features.shape[-1]}")
        return self.linear(features)
