"""Train one image model version with a named method and save it as a compatret model folder.

A method fixes four things: the embedder's spec (dims, inference-time neck), the classifier,
the compatibility loss against the frozen parent and the Compat rule saved with the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compatret.core.device import torch_device
from compatret.core.errors import CompatretError
from compatret.core.lineage import Compat, ModelVersion
from compatret.data.images import ImageSplit
from compatret.encoders.image import ImageEmbedder, ImageModelSpec, load_image_model, save_image_model
from compatret.models.heads.cosine import CosineClassifier
from compatret.models.losses.bct import BCTLoss, influence_weights
from compatret.models.losses.bt2 import BT2Loss
from compatret.models.losses.hoc import DSimplexLoss
from compatret.models.losses.oca import OCALoss
from compatret.train.image import distributed
from compatret.train.image.data import DecodedImages, ImageSource
from compatret.train.image.trainer import CompatLoss, TrainConfig, class_means, train_image_model
from compatret.train.seeding import seed_everything

METHODS = ("independent", "bct", "dsimplex", "bt2", "oca")
NEEDS_PARENT = ("bct", "bt2", "oca")


@dataclass(frozen=True)
class MethodSpec:
    """How one version is trained: the method and its few knobs (defaults follow the papers).

    name: independent | bct | dsimplex | bt2 | oca.
    num_classes: classifier rows (default: largest training label + 1).
    compat_weight: weight of the compatibility term (BCT / BT² influence, OCA prototype loss).
    align_weight: cosine pull of the new prefix to the old feature of the same image;
        None = the method's default (BCT 0, as in Shen et al.; BT² 1).
    max_classes: d-Simplex: preallocated classes; its features have max_classes - 1 dims.
    extra_dims: BT² / OCA: dims added to the parent's (model dim = parent dim + extra_dims).
    The spec's embed_dim is used by independent and bct; the other methods derive theirs.
    """

    name: str = "independent"
    num_classes: int | None = None
    compat_weight: float = 1.0
    align_weight: float | None = None
    max_classes: int = 100
    extra_dims: int = 32

    def align(self) -> float:
        if self.align_weight is not None:
            return self.align_weight
        return 1.0 if self.name == "bt2" else 0.0

    def label(self) -> str:
        return f"{self.name}+align" if self.name == "bct" and self.align() > 0 else self.name


@dataclass
class _Parent:
    """The frozen previous version: its record, model (eval, on the training device) and state."""

    version: ModelVersion
    model: ImageEmbedder
    state: dict[str, Any]
    source: ImageSource
    spec: ImageModelSpec
    device: str
    workers: int = 0

    def means(self, num_classes: int, normalized: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Its per-class mean features of the un-augmented training images, and the images per class
        (one streaming pass: the old model's features are never all held)."""
        return class_means(self.model, self.source, self.spec, num_classes, self.device, normalized, self.workers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x)

    def classifier_rows(self) -> torch.Tensor:
        weight = self.state.get("classifier", {}).get("weight")
        if weight is None:
            raise CompatretError(f"parent {self.version.id!r} saved no classifier ({self.version.method}); bct and bt2 need one")
        return weight


@dataclass(frozen=True)
class _Context:
    method: MethodSpec
    spec: ImageModelSpec
    parent: _Parent | None
    num_classes: int
    device: str


@dataclass(frozen=True)
class _Built:
    classifier: nn.Module | None
    loss: CompatLoss | None
    compat: Compat
    state: dict[str, Any]


def _embedder_spec(method: MethodSpec, spec: ImageModelSpec, parent: ModelVersion | None) -> ImageModelSpec:
    """The dims and neck a method imposes on the embedder (d-Simplex: K-1; BT²/OCA: old + k)."""
    if method.name == "dsimplex":
        return replace(spec, embed_dim=method.max_classes - 1)
    if method.name in ("bt2", "oca") and parent is not None:
        neck: dict[str, Any] = {"neck": "bt2", "old_dim": parent.dim} if method.name == "bt2" else {"neck": "oca"}
        return replace(spec, embed_dim=parent.dim + method.extra_dims, extra=neck)
    return spec


def _independent(c: _Context) -> _Built:
    return _Built(CosineClassifier(c.spec.embed_dim, c.num_classes), None, Compat.identity(), {})


def _bct(c: _Context) -> _Built:
    p = c.parent
    assert p is not None
    if c.spec.embed_dim < p.version.dim:
        raise CompatretError(f"new embed_dim {c.spec.embed_dim} is smaller than the old {p.version.dim}")
    classifier = CosineClassifier(c.spec.embed_dim, c.num_classes)
    weights = influence_weights(p.classifier_rows(), *p.means(c.num_classes))
    compat = Compat.identity() if c.spec.embed_dim == p.version.dim else Compat.prefix(p.version.dim)
    align = c.method.align()
    if align == 0:
        bct = BCTLoss(weights, weight=c.method.compat_weight).to(c.device)
        return _Built(classifier, lambda f, y, x: bct(f, y), compat, {})
    # BCT plus a cosine pull to the old feature of the same image is BT²'s loss without extra dims
    aligned = BT2Loss(weights, cosine_weight=align, influence_weight=c.method.compat_weight).to(c.device)

    def loss(feats: torch.Tensor, labels: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = aligned(feats, p.features(x), labels)
        return {"influence": parts["influence"], "align": parts["cosine"], "total": parts["total"]}

    return _Built(classifier, loss, compat, {})


def _dsimplex(c: _Context) -> _Built:
    k = c.method.max_classes
    if c.num_classes > k:
        raise CompatretError(f"d-Simplex preallocates {k} classes but the data has {c.num_classes}")
    crit = DSimplexLoss(k).to(c.device)
    state = {"simplex_classes": k}
    p = c.parent
    if p is None:
        return _Built(None, lambda f, y, x: crit(f, y), Compat.identity(), state)
    if p.version.dim != k - 1:
        raise CompatretError(f"parent {p.version.id!r} has {p.version.dim} dims; a {k}-class simplex needs {k - 1}")
    return _Built(None, lambda f, y, x: crit(f, y, p.features(x)), Compat.identity(), state)


def _bt2(c: _Context) -> _Built:
    p = c.parent
    assert p is not None
    weights = influence_weights(p.classifier_rows(), *p.means(c.num_classes))
    crit = BT2Loss(weights, cosine_weight=c.method.align(), influence_weight=c.method.compat_weight).to(c.device)
    classifier = CosineClassifier(c.spec.embed_dim, c.num_classes)
    return _Built(classifier, lambda f, y, x: crit(f, p.features(x), y), Compat.prefix(p.version.dim), {})


def _oca(c: _Context) -> _Built:
    p = c.parent
    assert p is not None
    old_classes = min(int(p.state.get("num_classes", c.num_classes)), c.num_classes)
    prototypes = p.means(c.num_classes, normalized=True)[0][:old_classes]
    w = c.method.compat_weight
    crit = OCALoss(prototypes, ce_weight=w, l2_weight=0.5 * w).to(c.device)
    classifier = CosineClassifier(c.spec.embed_dim, c.num_classes)
    return _Built(classifier, lambda f, y, x: crit(f, y), Compat.prefix(p.version.dim), {})


_BUILDERS: dict[str, Callable[[_Context], _Built]] = {
    "independent": _independent,
    "bct": _bct,
    "dsimplex": _dsimplex,
    "bt2": _bt2,
    "oca": _oca,
}


def _load_parent(parent_dir: str | Path, spec: ImageModelSpec, source: ImageSource, device: str, workers: int) -> _Parent:
    """Load the frozen parent; it must read images exactly as the new model does."""
    version = ModelVersion.load(parent_dir)
    model, state = load_image_model(parent_dir)
    old = model.spec
    if (old.in_channels, old.image_size, old.mean, old.std) != (spec.in_channels, spec.image_size, spec.mean, spec.std):
        raise CompatretError(f"parent {version.id!r} preprocesses images differently (size, channels, mean, std) from the new spec")
    model.to(device).eval().requires_grad_(False)
    return _Parent(version, model, state, source, spec, device, workers)


def fit_image_version(
    version_id: str,
    method: MethodSpec,
    train: ImageSplit | ImageSource,
    spec: ImageModelSpec,
    cfg: TrainConfig,
    out_dir: str | Path,
    parent_dir: str | Path | None = None,
) -> ModelVersion:
    """Train `method` on `train` against the frozen model in `parent_dir` and save a model folder.

    `train` streams (an ImageSource: a parquet file, an image folder tree) or is a small set held
    in memory (an ImageSplit, decoded once). The folder holds the weights (neck included),
    encoder.json and the ModelVersion with its parent and Compat rule, so `load_encoder` and
    `index upgrade` take it as it is. Under torchrun only the first process writes it.
    """
    if method.name not in _BUILDERS:
        raise CompatretError(f"unknown method {method.name!r}; choose from {METHODS}")
    if method.name in NEEDS_PARENT and parent_dir is None:
        raise CompatretError(f"{method.name} needs the old model (parent)")
    if method.name == "independent" and parent_dir is not None:
        raise CompatretError("independent training takes no parent")
    source = DecodedImages.of(train, spec) if isinstance(train, ImageSplit) else train
    num_classes = method.num_classes or int(source.labels.max()) + 1
    device = distributed.join(torch_device(cfg.device), distributed.ranks())
    parent = _load_parent(parent_dir, spec, source, device, cfg.workers) if parent_dir is not None else None
    spec = _embedder_spec(method, spec, parent.version if parent else None)
    seed_everything(cfg.seed)  # weights are initialised here, before the trainer seeds again
    model = ImageEmbedder(spec)
    built = _BUILDERS[method.name](_Context(method, spec, parent, num_classes, device))
    history = train_image_model(model, built.classifier, source, spec, cfg, compat_loss=built.loss, desc=f"train {version_id}")
    version = ModelVersion(
        version_id, spec.embed_dim, "image", parent=parent.version if parent else None, compat=built.compat, method=method.label()
    )
    state: dict[str, Any] = {"num_classes": num_classes, "history": history, **built.state}
    if built.classifier is not None:
        state["classifier"] = built.classifier.cpu().state_dict()
    if distributed.ranks().main:
        save_image_model(model.cpu(), version, out_dir, extra_state=state)
    distributed.barrier()
    return version
