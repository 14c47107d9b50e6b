"""BT² compatibility loss (Zhou et al. 2023) on the old-space prefix of a basis-transformed feature."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compatret.losses.oca import class_means


def build_pseudo_classifier(
    old_weight: torch.Tensor, old_feats: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Extend a frozen old classifier to ``num_classes`` rows for the influence loss.

    Rows for the old classes are the old classifier's rows; classes the old model
    never saw get the class mean of their old-model features, so every training
    label has a prototype in the old space.
    """
    num_old = old_weight.shape[0]
    if num_classes < num_old:
        raise ValueError(f"num_classes {num_classes} < old classes {num_old}")
    means = class_means(old_feats.detach(), labels, num_classes)
    return torch.cat([old_weight.detach().to(means.dtype), means[num_old:]], dim=0)


class BT2Loss(nn.Module):
    """Make ``new[:, :old_dim]`` interchangeable with the old feature of the same image.

    ``"cosine"`` is the mean ``1 - cos(new[:, :old_dim], old)``; ``"influence"``
    is BCT's cross-entropy of the normalised prefix through the normalised, frozen
    ``old_classifier`` (``[C, old_dim]``, see :func:`build_pseudo_classifier`)
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

    def forward(
        self, new_feats: torch.Tensor, old_feats: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Return ``{"cosine", "influence", "total"}`` for a batch of the same images."""
        if old_feats.shape[1] != self.old_dim or new_feats.shape[1] < self.old_dim:
            raise ValueError(
                f"need old dim {self.old_dim} and new dim >= it, got "
                f"{old_feats.shape[1]} and {new_feats.shape[1]}"
            )
        prefix = F.normalize(new_feats[:, : self.old_dim], dim=1)
        cosine = (1.0 - (prefix * F.normalize(old_feats.detach(), dim=1)).sum(dim=1)).mean()
        influence = F.cross_entropy(self.scale * prefix @ self.old_classifier.T, labels)
        total = self.cosine_weight * cosine + self.influence_weight * influence
        return {"cosine": cosine, "influence": influence, "total": total}
