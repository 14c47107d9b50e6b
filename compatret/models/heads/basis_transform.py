"""BT² basis-transformation head (Zhou et al. 2023): old space kept in a prefix, extra dims for new knowledge."""

from __future__ import annotations

from compatret.models.heads.orthogonal import OrthogonalProjection


class BasisTransform(OrthogonalProjection):
    """Orthogonal ``(old_dim + extra_dim)``-square transform of the backbone feature.

    The first ``old_dim`` outputs are trained to live in the old model's space, so
    they can be searched against an existing index (compatibility by prefix), while
    the ``extra_dim`` trailing outputs carry what the old space cannot express. The
    map is orthogonal, so splitting the output never loses information.
    """

    def __init__(self, old_dim: int, extra_dim: int) -> None:
        if old_dim < 1 or extra_dim < 0:
            raise ValueError(f"need old_dim >= 1 and extra_dim >= 0, got {old_dim}, {extra_dim}")
        super().__init__(old_dim + extra_dim)
        self.old_dim = old_dim
        self.extra_dim = extra_dim
        self.out_dim = old_dim + extra_dim
