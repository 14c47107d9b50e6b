"""Fixed d-Simplex classifier (Biondi et al. 2024) for stationary, compatible features."""

from __future__ import annotations

import math

import torch
from torch import nn


def simplex_vertices(num_classes: int) -> torch.Tensor:
    """Return the ``[K, K-1]`` unit vertices of a regular simplex centred at the origin.

    Every pair of rows has cosine exactly ``-1/(K-1)``, the largest possible equal
    separation of K directions, so a classifier on them never needs to move when a
    later model adds training data. Built from the Helmert basis of the hyperplane
    orthogonal to ``(1, ..., 1)``; no randomness, so every model version gets the
    same vertices.
    """
    if num_classes < 2:
        raise ValueError(f"a simplex needs at least 2 classes, got {num_classes}")
    k = num_classes
    helmert = torch.zeros(k - 1, k, dtype=torch.float64)
    for row in range(1, k):
        helmert[row - 1, :row] = 1.0
        helmert[row - 1, row] = -float(row)
        helmert[row - 1] /= math.sqrt(row * (row + 1))
    # Columns of the Helmert block are the centred one-hot vectors in K-1 coordinates.
    vertices = helmert.T * math.sqrt(k / (k - 1))
    return vertices.to(torch.float32)


class SimplexClassifier(nn.Module):
    """Linear classifier whose weights are the frozen simplex vertices.

    ``num_classes`` is the preallocated capacity (it may exceed the classes seen so
    far): new classes take already-placed vertices, so old features keep their
    meaning across model upgrades. The vertices are a buffer, never a parameter.
    """

    weight: torch.Tensor

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.feat_dim = num_classes - 1
        self.register_buffer("weight", simplex_vertices(num_classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return logits ``features @ W.T`` of shape ``[B, num_classes]``."""
        if features.shape[-1] != self.feat_dim:
            raise ValueError(f"feature dim {features.shape[-1]} != num_classes - 1 = {self.feat_dim}")
        return features @ self.weight.T
