"""OCA loss (Ricci et al. 2024): anchor the old-space prefix of new features to old-class prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compatret.models.losses.terms import influence, prefix_distance


def class_means(feats: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Return ``[num_classes, D]`` per-class means of ``feats``; classes without samples get zeros.

    Used to turn frozen old-model features into class prototypes (OCA) or into
    pseudo-classifier rows for classes the old model never saw (BT²).
    """
    sums = torch.zeros(num_classes, feats.shape[1], dtype=feats.dtype, device=feats.device)
    sums.index_add_(0, labels, feats)
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).to(feats.dtype)
    return sums / counts[:, None]


class OCALoss(nn.Module):
    """Pull ``new[:, :old_dim]`` towards fixed prototypes of the old classes.

    ``prototypes`` is ``[C_old, old_dim]``, the class means of old-model features.
    Only samples with ``label < C_old`` contribute; new classes are free to use the
    rest of the space. Parts: ``"ce"`` is cross-entropy over ``scale``-scaled
    cosine logits to the prototypes (the BCT influence term), ``"l2"`` the squared
    distance between the normalised feature and its normalised prototype
    (``2 - 2 cos``); ``"total"`` is their weighted sum.
    """

    prototypes: torch.Tensor

    def __init__(
        self,
        prototypes: torch.Tensor,
        scale: float = 16.0,
        ce_weight: float = 1.0,
        l2_weight: float = 0.5,
    ) -> None:
        super().__init__()
        self.register_buffer("prototypes", F.normalize(prototypes.detach().float(), dim=1))
        self.old_dim = prototypes.shape[1]
        self.scale = scale
        self.ce_weight = ce_weight
        self.l2_weight = l2_weight

    def forward(self, new_feats: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"ce", "l2", "total"}``, all 0 when the batch holds no old class."""
        if new_feats.shape[1] < self.old_dim:
            raise ValueError(f"feature dim {new_feats.shape[1]} < old_dim {self.old_dim}")
        keep = labels < self.prototypes.shape[0]
        if not bool(keep.any()):
            zero = new_feats.sum() * 0.0
            return {"ce": zero, "l2": zero, "total": zero}
        prefix = F.normalize(new_feats[keep, : self.old_dim], dim=1)
        target = labels[keep]
        ce = influence(prefix, self.prototypes, target, self.scale)
        l2 = prefix_distance(prefix, self.prototypes[target])
        total = self.ce_weight * ce + self.l2_weight * l2
        return {"ce": ce, "l2": l2, "total": total}
