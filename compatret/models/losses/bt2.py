"""BT² compatibility loss (Zhou et al. 2023) on the old-space prefix of a basis-transformed feature."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compatret.models.losses.terms import influence, old_prefix, prefix_cosine


class BT2Loss(nn.Module):
    """Make ``new[:, :old_dim]`` interchangeable with the old feature of the same image.

    ``"cosine"`` is the mean ``1 - cos(new[:, :old_dim], old)``; ``"influence"``
    is BCT's cross-entropy of the normalised prefix through the normalised, frozen
    ``old_classifier`` (``[C, old_dim]``, see :func:`compatret.losses.bct.influence_weights`)
    scaled by ``scale``; ``"total"`` is their weighted sum. The extra dims are
    left to the task loss.
    """

    old_classifier: torch.Tensor

    def __init__(
        self,
        old_classifier: torch.Tensor,
        scale: float = 16.0,
        cosine_weight: float = 1.0,
        influence_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.register_buffer("old_classifier", F.normalize(old_classifier.detach().float(), dim=1))
        self.old_dim = old_classifier.shape[1]
        self.scale = scale
        self.cosine_weight = cosine_weight
        self.influence_weight = influence_weight

    def forward(self, new_feats: torch.Tensor, old_feats: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Return ``{"cosine", "influence", "total"}`` for a batch of the same images."""
        if old_feats.shape[1] != self.old_dim or new_feats.shape[1] < self.old_dim:
            raise ValueError(f"need old dim {self.old_dim} and new dim >= it, got {old_feats.shape[1]} and {new_feats.shape[1]}")
        prefix = old_prefix(new_feats, self.old_dim)
        cosine = prefix_cosine(prefix, F.normalize(old_feats.detach(), dim=1))
        classified = influence(prefix, self.old_classifier, labels, self.scale)
        total = self.cosine_weight * cosine + self.influence_weight * classified
        return {"cosine": cosine, "influence": classified, "total": total}
