"""A cosine (normalised) classifier: logits are scaled cosines, so features suit cosine retrieval."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class CosineClassifier(nn.Module):
    """logits = scale * cos(feature, class weight); the weights double as class prototypes."""

    def __init__(self, dim: int, num_classes: int, scale: float = 16.0) -> None:
        super().__init__()
        # rows of norm ~1: tiny rows make normalised-weight gradients huge and slowed learning (12.8% vs 18.1% after 2 epochs)
        self.weight = nn.Parameter(torch.randn(num_classes, dim) / dim**0.5)
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).T
