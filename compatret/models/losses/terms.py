"""The compatibility terms every method is made of, written once: the new feature's first
d_old dims (its old-space prefix) classified by frozen old-space rows (BCT's influence loss,
also BT²'s, OCA's prototype cross-entropy and the text methods' InfoNCE against stored item
vectors), pulled onto the old feature (BT²'s cosine) or onto a row (OCA's squared distance).

Each term takes the unit prefix (`old_prefix`), computed once by the caller when it feeds
several terms: one normalisation in the graph, so training is the same to the last bit as
when each method wrote its own.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def old_prefix(new: Tensor, d_old: int) -> Tensor:
    """The first d_old dims of new features, unit length: the part that lives in the old space."""
    return F.normalize(new[:, :d_old], dim=1)


def influence(prefix: Tensor, old_rows: Tensor, targets: Tensor, scale: float, mask: Tensor | None = None) -> Tensor:
    """Cross-entropy of unit old-space prefixes against frozen, unit-length old-space rows (a
    classifier's weights, class means, prototypes or stored vectors): row targets[i] must win for
    prefix i. `mask` (True = not a candidate) drops rows from a prefix's softmax."""
    logits = scale * prefix @ old_rows.T
    if mask is not None:
        logits = logits.masked_fill(mask, float("-inf"))
    return F.cross_entropy(logits, targets)


def prefix_cosine(prefix: Tensor, old: Tensor) -> Tensor:
    """Mean 1 - cos(prefix, old) over a batch of the same items (both unit length)."""
    return (1.0 - (prefix * old).sum(dim=1)).mean()


def prefix_distance(prefix: Tensor, old_rows: Tensor) -> Tensor:
    """Mean squared distance of unit prefixes to unit old-space rows (one per prefix)."""
    return (prefix - old_rows).pow(2).sum(dim=1).mean()


def batch_targets(new: Tensor) -> Tensor:
    """0..n-1: item i's own row, for InfoNCE over a batch."""
    return torch.arange(len(new), device=new.device)
