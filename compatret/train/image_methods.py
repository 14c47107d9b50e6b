"""Train one image model version with a named method and save it as a compatret model folder."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.nn import functional as F

from compatret.data.images import ImageSplit
from compatret.encoders.image import ImageEmbedder, ImageModelSpec, load_image_model, save_image_model, to_batch
from compatret.errors import CompatretError
from compatret.heads.cosine import CosineClassifier
from compatret.losses.bct import BCTLoss, influence_weights
from compatret.train.image_trainer import TrainConfig, embed, seed_everything, train_image_model
from compatret.versions import Compat, ModelVersion

METHODS = ("independent", "bct")


def fit_image_version(
    version_id: str,
    method: str,
    train: ImageSplit,
    spec: ImageModelSpec,
    cfg: TrainConfig,
    out_dir: str | Path,
    parent_dir: str | Path | None = None,
    num_classes: int | None = None,
    compat_weight: float = 1.0,
    align_weight: float = 0.0,
) -> ModelVersion:
    """Train `method` on `train` and save weights, classifier and ModelVersion in `out_dir`.

    independent: cross-entropy only, no parent. bct: cross-entropy plus the BCT influence
    loss through the parent's frozen classifier (pseudo-classifier for unseen classes),
    weighted by compat_weight, plus (align_weight > 0) a cosine pull of each new feature
    towards the old feature of the same image.
    """
    if method not in METHODS:
        raise CompatretError(f"unknown method {method!r}; choose from {METHODS}")
    num_classes = num_classes or int(train.labels.max()) + 1
    x = to_batch(train.images, spec)
    y = torch.from_numpy(train.labels)
    seed_everything(cfg.seed)  # weights are initialised here, before the trainer seeds again
    model = ImageEmbedder(spec)
    classifier = CosineClassifier(spec.embed_dim, num_classes)
    parent: ModelVersion | None = None
    compat = Compat.identity()
    loss = None
    if method == "bct":
        if parent_dir is None:
            raise CompatretError("bct needs the old model (parent_dir)")
        parent = ModelVersion.load(parent_dir)
        old_model, old_state = load_image_model(parent_dir)
        old_feats = embed(old_model, x, device=cfg.device)
        weights = influence_weights(old_state["classifier"]["weight"], old_feats, y, num_classes)
        bct = BCTLoss(weights, weight=compat_weight).to(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if spec.embed_dim < parent.dim:
            raise CompatretError(f"new embed_dim {spec.embed_dim} is smaller than the old {parent.dim}")
        compat = Compat.identity() if spec.embed_dim == parent.dim else Compat.prefix(parent.dim)
        old_model.to(bct.old_weight.device).eval()

        def loss(feats: torch.Tensor, labels: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
            parts = bct(feats, labels)
            if align_weight > 0:  # pull each new feature towards the old feature of the same image
                with torch.no_grad():
                    old = F.normalize(old_model(x), dim=1)
                align = (1 - (F.normalize(feats[:, : old.shape[1]], dim=1) * old).sum(1)).mean()
                parts = {**parts, "align": align, "total": parts["total"] + align_weight * align}
            return parts
    history = train_image_model(model, classifier, x, y, cfg, compat_loss=loss, desc=f"train {version_id}")
    label = f"{method}+align" if method == "bct" and align_weight > 0 else method
    version = ModelVersion(version_id, spec.embed_dim, "image", parent=parent, compat=compat, method=label)
    save_image_model(
        model.cpu(), version, out_dir,
        extra_state={"classifier": classifier.cpu().state_dict(), "num_classes": num_classes, "history": history},
    )
    return version
