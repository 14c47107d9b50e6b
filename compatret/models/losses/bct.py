"""BCT influence loss (Shen et al. 2020): new features classified by the old model's frozen classifier."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from compatret.models.losses.terms import influence, old_prefix


def influence_weights(old_weight: torch.Tensor, old_means: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Old classifier rows for the classes it knew, old-feature class means for the new ones.

    Classes the old model never saw get a pseudo-classifier (as BT² and OCA do), so the
    influence loss covers every training sample. `old_means` [num_classes, d_old] are the old
    model's mean features per class, `counts` the images per class (see `class_means`).
    Returns [num_classes, d_old], rows L2-normalised.
    """
    c_old, d_old = old_weight.shape
    num_classes = len(counts)
    seen = counts[c_old:num_classes]
    if len(seen) and not bool((seen > 0).all()):
        raise ValueError(f"no samples of new class {c_old + int(torch.nonzero(seen == 0)[0])} to build its pseudo-classifier")
    means = old_means.float()[c_old:num_classes]
    weight = torch.cat([F.normalize(old_weight.detach().float(), dim=1), F.normalize(means, dim=1)])
    if weight.shape != (num_classes, d_old):
        raise ValueError(f"influence weights have shape {tuple(weight.shape)}, expected ({num_classes}, {d_old})")
    return weight


class BCTLoss(nn.Module):
    """Cross-entropy of the new feature's first d_old dims through the frozen old classifier."""

    old_weight: torch.Tensor  # a buffer (register_buffer)

    def __init__(self, old_weight: torch.Tensor, scale: float = 16.0, weight: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("old_weight", F.normalize(old_weight.detach().float(), dim=1))
        self.scale = scale
        self.weight = weight

    def forward(self, new_features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        term = influence(old_prefix(new_features, self.old_weight.shape[1]), self.old_weight, labels, self.scale)
        return {"influence": term, "total": self.weight * term}
