"""The compatibility matrix of a sequence of image models, scored through the compatret lineage.

Queries of model i search the gallery of model j (j <= i) exactly as an upgraded index
would: the pair's CompatPlan (from `resolve`) maps both sides into the shared space, so a
BT² or OCA model is compared on its prefix. Pairs outside a lineage are refused, or, when
asked, scored on raw vectors to show what an unrelated model does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compatret.core.contract import CompatPlan, apply_plan, resolve
from compatret.core.errors import CompatretError
from compatret.core.lineage import ModelVersion
from compatret.data.images import ImageSplit
from compatret.evaluation.compat_metrics import (
    average_compatibility,
    average_multimodel_accuracy,
    ecc,
    plot_compat_matrix,
    retrieval_scores,
)

SCORES = ("top1", "map")


@dataclass(frozen=True)
class CompatMatrix:
    """M[query][gallery] for each score (NaN where a pair was not scored) and how each pair was compared."""

    models: list[ModelVersion]
    scores: dict[str, np.ndarray]
    how: dict[tuple[int, int], str]
    queries: int

    def summary(self, score: str) -> dict[str, Any]:
        """ECC per pair, AC and AM of one score; a refused pair counts as incompatible, AM is then undefined."""
        m = self.scores[score]
        lower = np.tril(np.ones_like(m, dtype=bool))
        refused = bool(np.isnan(m[lower]).any())
        filled = np.where(np.isnan(m) & lower, -np.inf, m)
        return {
            "ecc": ecc(filled),
            "ac": average_compatibility(filled),
            "am": None if refused else average_multimodel_accuracy(filled),
        }

    def to_dict(self) -> dict[str, Any]:
        sums = {s: self.summary(s) for s in SCORES}
        pairs = []
        for (i, j), how in sorted(self.how.items()):
            pair: dict[str, Any] = {"query": self.models[i].id, "gallery": self.models[j].id, "compared": how}
            for s in SCORES:
                pair[s] = _num(self.scores[s][i, j])
                if i > j:
                    pair[f"ecc_{s}"] = bool(sums[s]["ecc"][i, j])
            pairs.append(pair)
        return {
            "metric": "cosine",
            "leave_one_out": True,
            "queries": self.queries,
            "models": [{"id": v.id, "dim": v.dim, "method": v.method, "compat": v.compat.to_dict()} for v in self.models],
            **{s: [[_num(x) for x in row] for row in self.scores[s]] for s in SCORES},
            "pairs": pairs,
            "ac": {s: sums[s]["ac"] for s in SCORES},
            "am": {s: sums[s]["am"] for s in SCORES},
        }


def _num(x: float) -> float | None:
    return None if np.isnan(x) else round(float(x), 4)


def _plan(query: ModelVersion, gallery: ModelVersion, base_dir: str | Path, raw_unrelated: bool) -> tuple[CompatPlan | None, str]:
    if gallery.id in [v.id for v in query.lineage()]:
        plan = resolve(query, gallery, base_dir)
        transforms = f", {len(plan.gallery_transforms)} transforms" if plan.gallery_transforms else ""
        return plan, f"lineage: {plan.dims} shared dims{transforms}"
    if raw_unrelated and query.dim == gallery.dim:
        return CompatPlan(query.id, gallery.id, query.dim), "raw: no lineage"
    return None, "refused: no lineage"


def compat_matrix(
    model_dirs: Sequence[str | Path], split: ImageSplit, raw_unrelated: bool = False, device: str | None = None, progress: bool = False
) -> CompatMatrix:
    """Encode `split` with every model (oldest first) and score every pair j <= i, leave-one-out."""
    from compatret.encoders import load_encoder

    if not model_dirs:
        raise CompatretError("give at least one model folder")
    encoders = [load_encoder(str(d), device=device) for d in model_dirs]
    models = [e.version for e in encoders]
    ids = [v.id for v in models]
    if len(set(ids)) != len(ids):
        raise CompatretError(f"model ids must differ, got {ids}")
    for v in models:
        if v.modality != "image":
            raise CompatretError(f"model {v.id!r} is a {v.modality} model; compat eval reads images")
    feats = [e.encode_items(split.images, progress=progress) for e in encoders]
    t = len(models)
    scores = {s: np.full((t, t), np.nan) for s in SCORES}
    how: dict[tuple[int, int], str] = {}
    for i in range(t):
        for j in range(i + 1):
            plan, how[i, j] = _plan(models[i], models[j], model_dirs[i], raw_unrelated)
            if plan is None:
                continue
            q, g = apply_plan(plan, feats[i], feats[j])
            assert q is not None and g is not None  # both given, so both mapped
            res = retrieval_scores(q, g, split.labels, split.labels, leave_one_out=True)
            for s in SCORES:
                scores[s][i, j] = res[s]
    return CompatMatrix(models, scores, how, len(split.labels))


def write_compat_report(result: CompatMatrix, out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """compat.json plus one heatmap PNG per score in out_dir; returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "compat.json"}
    paths["json"].write_text(json.dumps(result.to_dict(), indent=2))
    labels = [v.id for v in result.models]
    for s in SCORES:
        name = "top-1" if s == "top1" else "mAP"
        heading = f"{title} {name} (%)".strip()
        paths[s] = plot_compat_matrix(result.scores[s], labels, out / f"compat_{s}.png", heading)
    return paths
