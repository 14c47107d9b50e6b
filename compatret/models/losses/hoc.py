"""HOC alignment and the d-Simplex training loss of iamcl2r (Biondi et al. 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from compatret.models.heads.simplex import SimplexClassifier


class HOCLoss(nn.Module):
    """InfoNCE that pulls each new feature onto the frozen old feature of the same image.

    For anchor ``new_i`` the positive is ``old_i``; the negatives are the other old
    features in the batch *except* those of the anchor's class, which are masked
    out so that same-class images are never pushed apart. Both sides are
    L2-normalised and similarities are scaled by ``mu``. Unlike the reference code
    (which zeroes masked similarities), masked entries are removed from the
    softmax and the positive stays in the denominator, so the loss is a proper
    cross-entropy (>= 0). Old features get no gradient.
    """

    def __init__(self, mu: float = 10.0) -> None:
        super().__init__()
        self.mu = mu

    def forward(self, new_feats: torch.Tensor, old_feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return the mean InfoNCE over the batch (a scalar)."""
        if new_feats.shape != old_feats.shape:
            raise ValueError(f"shape mismatch: new {tuple(new_feats.shape)} vs old {tuple(old_feats.shape)}")
        new = F.normalize(new_feats, dim=1)
        old = F.normalize(old_feats.detach(), dim=1)
        logits = self.mu * new @ old.T
        same_class = labels[:, None] == labels[None, :]
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        logits = logits.masked_fill(same_class & ~eye, float("-inf"))
        return F.cross_entropy(logits, torch.arange(len(labels), device=labels.device))


class DSimplexLoss(nn.Module):
    """CE through a fixed simplex classifier, mixed with HOC once an old model exists.

    ``total = ce`` for the first model, and ``lambda_ * ce + (1 - lambda_) * hoc``
    when old features are given (Eq. 3 of the paper, ``lambda_ = 0.1`` in their
    code): the fixed classifier keeps the feature space stationary, HOC aligns the
    new model to the old one image by image.
    """

    def __init__(self, num_classes: int, lambda_: float = 0.1, mu: float = 10.0) -> None:
        super().__init__()
        self.classifier = SimplexClassifier(num_classes)
        self.hoc = HOCLoss(mu)
        self.lambda_ = lambda_

    def forward(
        self,
        new_feats: torch.Tensor,
        labels: torch.Tensor,
        old_feats: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Return ``{"ce", "hoc", "total"}``; ``hoc`` is 0 when ``old_feats`` is None."""
        ce = F.cross_entropy(self.classifier(new_feats), labels)
        if old_feats is None:
            return {"ce": ce, "hoc": ce.new_zeros(()), "total": ce}
        hoc = self.hoc(new_feats, old_feats, labels)
        total = self.lambda_ * ce + (1.0 - self.lambda_) * hoc
        return {"ce": ce, "hoc": hoc, "total": total}
