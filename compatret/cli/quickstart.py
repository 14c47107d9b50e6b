"""The main job end to end, offline: train v1, build its gallery, train a compatible v2, upgrade, query.

Default data: scikit-learn's bundled handwritten digits; `--data DIR` takes any folder in the
shared parquet layout (train.parquet / test.parquet with image bytes and labels).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from compatret.core.errors import CompatretError
from compatret.data.images import ImageSplit, load_digits_splits, load_parquet_split
from compatret.encoders import load_encoder
from compatret.encoders.image import ImageModelSpec
from compatret.engine.results import NeedsAdapter
from compatret.engine.service import Service
from compatret.evaluation.compat_metrics import retrieval_scores
from compatret.train.image.methods import MethodSpec, fit_image_version
from compatret.train.image.trainer import TrainConfig

# BCT influence loss plus a cosine pull to the old feature of the same image, both at weight 2:
# influence alone passed ECC on digits for 1 seed in 4; at 1 + 1 the new/old margin shrank to
# -0.7 points once the old model learnt better (unit-norm classifier start); 2 + 2 passed for
# seeds 0, 1, 2 (new/old - old/old: +3.5, +6.5, +3.5 top-1).
BCT_WEIGHT = 2.0
ALIGN_WEIGHT = 2.0


@dataclass
class QuickstartReport:
    """Top-1 leave-one-out retrieval accuracy (percent) of each (query model, gallery model) pair."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    upgrade_seconds: float = 0.0
    refused: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"pairs": self.rows, "upgrade_seconds": self.upgrade_seconds, "refused": self.refused, "seconds": self.seconds}

    def table(self) -> str:
        lines = [f"{'pair':<30}{'query model':<22}{'gallery vectors':<18}{'top-1 %':>8}"]
        for r in self.rows:
            lines.append(f"{r['pair']:<30}{r['query']:<22}{r['gallery']:<18}{r['top1']:>8.1f}")
        return "\n".join(lines)


def _top1_from_service(service: Service, split: ImageSplit, ids: list[str], model: str | None = None) -> float:
    """Leave-one-out top-1 through the real query path: each test image queries the gallery."""
    label_of = dict(zip(ids, split.labels.tolist()))
    results = service.query(images=split.images, model=model, k=2)
    hits = 0
    for qid, res in zip(ids, results):
        best = next(i for i in res.ids if i != qid)
        hits += int(label_of[best] == label_of[qid])
    return 100.0 * hits / len(ids)


def _top1_raw(queries: np.ndarray, gallery: np.ndarray, labels: np.ndarray) -> float:
    """The same measure on raw vectors, for the pair compatret refuses to compare."""
    return retrieval_scores(queries, gallery, labels, labels, leave_one_out=True)["top1"]


# Epochs per model on the bundled digits, for a run of about a minute on 2 idle cores (61 s with per-image augmentation):
# v2-bct needs its 30 (at 15 its new/old top-1 fell below old/old for seeds 0 and 1); v1 at 15
# and the independent contrast at 10 keep the story for seeds 0, 1, 2 (new/old - old/old:
# +7.4, +3.7, +4.3 top-1 with per-image augmentation; independent new/old 10, 1, 31 %, chance 10 %).
DIGITS_EPOCHS = {"v1": 15, "v2-bct": 30, "v2-independent": 10}


def _load(data: str | None) -> tuple[ImageSplit, ImageSplit, ImageModelSpec, dict[str, TrainConfig]]:
    """The splits, the model spec and each version's training settings."""
    if data is None:
        train, test = load_digits_splits()
        spec = ImageModelSpec(width=0.25, in_channels=1, image_size=16, embed_dim=64, mean=(0.3,), std=(0.4,))
        cfg = TrainConfig(batch_size=64, lr=0.1, crop_padding=2, flip=False)
        return train, test, spec, {name: replace(cfg, epochs=n) for name, n in DIGITS_EPOCHS.items()}
    train, test = load_parquet_split(data, "train"), load_parquet_split(data, "test")
    spec = ImageModelSpec(width=0.25, in_channels=3, image_size=32, embed_dim=128)
    cfg = TrainConfig(epochs=10, batch_size=128, lr=0.1)
    return train, test.head_per_class(20), spec, {name: cfg for name in DIGITS_EPOCHS}


def run_quickstart(workdir: str | Path, data: str | None = None, progress: bool = True) -> QuickstartReport:
    """Train v1 (first 70% of the classes), v2 compatible (BCT) and v2 independent (all classes),
    build a v1 gallery, upgrade it to v2 without backfill, and measure every pair."""
    start = time.perf_counter()
    work = Path(workdir)
    if work.exists() and any(work.iterdir()):
        raise CompatretError(f"{work} is not empty: choose a new --workdir")
    train, test, spec, configs = _load(data)
    cfg = {name: replace(c, progress=progress) for name, c in configs.items()}
    n_classes = int(train.labels.max()) + 1
    old_classes = int(round(0.7 * n_classes))
    models = work / "models"
    fit_image_version("v1", MethodSpec("independent"), train.subset(train.labels < old_classes), spec, cfg["v1"], models / "v1")
    bct = MethodSpec("bct", num_classes=n_classes, compat_weight=BCT_WEIGHT, align_weight=ALIGN_WEIGHT)
    fit_image_version("v2-bct", bct, train, spec, cfg["v2-bct"], models / "v2-bct", parent_dir=models / "v1")
    other_seed = replace(cfg["v2-independent"], seed=cfg["v2-independent"].seed + 1)  # independent = its own init too
    fit_image_version("v2-independent", MethodSpec("independent"), train, spec, other_seed, models / "v2-independent")

    ids = [f"test-{i}" for i in range(len(test.images))]
    items = [{"id": i, "image": img, "metadata": {"label": int(y)}} for i, img, y in zip(ids, test.images, test.labels)]
    gallery = Service.create(work / "gallery", model=str(models / "v1"))
    gallery.add_items(items, progress=progress)
    report = QuickstartReport()
    report.rows.append({"pair": "old/old", "query": "v1", "gallery": "v1", "top1": _top1_from_service(gallery, test, ids)})

    t0 = time.perf_counter()
    gallery.upgrade(str(models / "v2-bct"))
    report.upgrade_seconds = time.perf_counter() - t0
    report.rows.append(
        {"pair": "new/old (no backfill)", "query": "v2-bct", "gallery": "v1", "top1": _top1_from_service(gallery, test, ids)}
    )

    backfilled = Service.create(work / "gallery-v2", model=str(models / "v2-bct"))
    backfilled.add_items(items, progress=progress)
    report.rows.append(
        {"pair": "new/new (after backfill)", "query": "v2-bct", "gallery": "v2-bct", "top1": _top1_from_service(backfilled, test, ids)}
    )

    try:
        gallery.upgrade(str(models / "v2-independent"))
    except NeedsAdapter as exc:  # the refusal as the CLI words it: the fix with this run's paths
        report.refused = str(exc.for_command(str(work / "gallery"), str(models / "v2-independent")))
    indep = load_encoder(str(models / "v2-independent")).encode_items(test.images)
    old = load_encoder(str(models / "v1")).encode_items(test.images)
    report.rows.append(
        {"pair": "independent new/old", "query": "v2-independent", "gallery": "v1", "top1": _top1_raw(indep, old, test.labels)}
    )
    report.rows.append(
        {
            "pair": "independent new/new",
            "query": "v2-independent",
            "gallery": "v2-independent",
            "top1": _top1_raw(indep, indep, test.labels),
        }
    )
    report.seconds = time.perf_counter() - start
    return report
