"""The compatibility contract: how a query model reads a gallery model's rows (prefix dims, transforms)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compatret.core.errors import CompatretError
from compatret.core.lineage import IncompatibleLineage, ModelVersion
from compatret.core.paths import confined
from compatret.core.transforms import cached_map, normalize


@dataclass(frozen=True)
class CompatPlan:
    """How to score query vectors of one model against stored vectors of an ancestor.

    Score = cosine(query[:, :dims], map(gallery)[:, :dims]), where map applies the
    learned transforms of the path in order.
    """

    query_model: str
    gallery_model: str
    dims: int
    gallery_transforms: tuple[str, ...] = ()
    base_dir: str | None = None  # the folder gallery_transforms lie in: errors name them relative to it


def resolve(query: ModelVersion, gallery: ModelVersion, base_dir: str | Path | None = None) -> CompatPlan:
    """Compose the Compat rules from `gallery` down to `query` into one CompatPlan.

    identity keeps the shared dims, prefix(d) narrows them to d, transform maps the
    gallery vectors into the child space (it needs the full parent space). An ancestor's
    queries against a descendant's vectors work through identity and prefix rules (see
    `_ancestor_plan`); models on other branches are refused.
    """
    chain = query.lineage()
    ids = [m.id for m in chain]
    if gallery.id not in ids:
        if query.id in [m.id for m in gallery.lineage()]:
            return _ancestor_plan(query, gallery)
        raise IncompatibleLineage(
            f"model {query.id!r} is not compatible with gallery model {gallery.id!r}: its lineage is {' -> '.join(ids)}"
        )
    path = list(reversed(chain[: ids.index(gallery.id) + 1]))  # gallery ... query
    if path[0].dim != gallery.dim:
        raise CompatretError(f"gallery model {gallery.id!r} dim differs from lineage record")
    shared = gallery.dim
    transforms: list[str] = []
    for child in path[1:]:
        parent = child.parent
        assert parent is not None
        rule = child.compat
        if rule.kind == "prefix":
            assert rule.dims is not None
            shared = min(shared, rule.dims)
        elif rule.kind == "transform":
            if shared != parent.dim:
                raise CompatretError(
                    f"cannot apply transform of {child.id!r} after a prefix rule narrowed the shared space to {shared} dims"
                )
            assert rule.transform_path is not None
            tp = confined(base_dir, rule.transform_path, "transform_path") if base_dir is not None else Path(rule.transform_path)
            transforms.append(str(tp))
            shared = child.dim
    return CompatPlan(query.id, gallery.id, shared, tuple(transforms), str(Path(base_dir).resolve()) if base_dir is not None else None)


def _ancestor_plan(query: ModelVersion, gallery: ModelVersion) -> CompatPlan:
    """An older model's queries against a descendant's vectors (a client not yet upgraded).

    Walking down from the query's model: identity keeps the space, prefix(d) keeps d dims of
    it (the descendant's first d dims live in its parent's space); a transform has no inverse,
    so the older model cannot read those vectors and is refused, naming the rule."""
    path = list(reversed(gallery.lineage()))
    path = path[[m.id for m in path].index(query.id) :]  # query ... gallery
    shared = query.dim
    for child in path[1:]:
        if child.compat.kind == "transform":
            raise CompatretError(
                f"model {query.id!r} cannot query vectors of {gallery.id!r}: {child.id!r} maps its parent's "
                "space with a transform, which has no inverse (upgrade the client to a newer model)"
            )
        if child.compat.kind == "prefix":
            assert child.compat.dims is not None
            shared = min(shared, child.compat.dims)
    return CompatPlan(query.id, gallery.id, shared)


def apply_plan(plan: CompatPlan, queries: np.ndarray | None, gallery: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Map query and/or gallery vectors into the plan's shared space, L2-normalised (`normalize`
    and every learned map return fresh float32 arrays, so no cast or copy is needed here)."""
    q = None if queries is None else normalize(queries[:, : plan.dims])
    g = gallery
    if g is not None:
        for tp in plan.gallery_transforms:
            g = cached_map(tp, os.path.relpath(tp, plan.base_dir) if plan.base_dir else None)(g)
        g = normalize(g[:, : plan.dims])
    return q, g
