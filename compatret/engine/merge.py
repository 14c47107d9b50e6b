"""One query over a mixed gallery: each model version's rows searched in the space its Compat
plan gives, the hits merged by score."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from compatret.core.contract import CompatPlan, apply_plan
from compatret.core.lineage import ModelVersion
from compatret.search.kernels import resolve_ann
from compatret.search.view import SearchIndex
from compatret.store.meta import GalleryMeta

PlanOf = Callable[[ModelVersion, ModelVersion], CompatPlan]


def group_search(
    index: SearchIndex, group: str, plan: CompatPlan, q: np.ndarray, k: int, ann: str, dim: int, kernel: str
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, row labels) of one version's rows, in the plan's space."""
    if plan.dims == dim and not plan.gallery_transforms:
        return index.search(group, q, k, kernel, ann)
    key = f"{plan.dims}:{'|'.join(plan.gallery_transforms)}"
    return index.search(group, q, k, kernel, ann, key, lambda x: apply_plan(plan, None, x)[1])  # type: ignore[arg-type,return-value]


def merged_search(
    index: SearchIndex, meta: GalleryMeta, version: ModelVersion, vectors: np.ndarray, k: int, plan_of: PlanOf, kernel: str
) -> tuple[np.ndarray, np.ndarray]:
    """Search each version's rows in its plan's space and merge: (scores, labels), -1 labels pad.

    `raw` merge compares each row in the widest space it shares with the query; `shared`
    compares every row in the space shared by all versions present."""
    plans = {g: plan_of(version, meta.version(g)) for g in index.versions()}
    if not plans:
        return np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int64)
    if meta.merge == "shared" and len(plans) > 1:
        shared = min(p.dims for p in plans.values())
        plans = {g: replace(p, dims=shared) for g, p in plans.items()}
    ann = resolve_ann(meta.ann, index.size)
    parts = []
    for g, plan in plans.items():
        q, _ = apply_plan(plan, vectors, None)
        parts.append(group_search(index, g, plan, q, k, ann, meta.version(g).dim, kernel))  # type: ignore[arg-type]
    if len(parts) == 1:
        return parts[0]
    all_scores = np.concatenate([p[0] for p in parts], axis=1)
    all_labels = np.concatenate([p[1] for p in parts], axis=1)
    all_scores = np.where(all_labels < 0, -np.inf, all_scores)
    top = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(all_scores, top, 1), np.take_along_axis(all_labels, top, 1)
