"""BCT influence loss and the image trainer (seeded, checkpointed, resumable) on real digits."""

from __future__ import annotations

import pytest
import torch

from compatret.data.images import load_digits_splits
from compatret.encoders.image import ImageEmbedder, ImageModelSpec, to_batch
from compatret.models.heads.cosine import CosineClassifier
from compatret.models.losses.bct import BCTLoss, influence_weights
from compatret.models.losses.oca import class_means
from compatret.train.image.data import DecodedImages
from compatret.train.image.trainer import TrainConfig, train_image_model

SPEC = ImageModelSpec(width=0.125, in_channels=1, image_size=8, embed_dim=16, mean=(0.3,), std=(0.4,))


def test_influence_weights_use_class_means_for_new_classes():
    old_w = torch.randn(2, 4)
    feats = torch.randn(30, 4)
    labels = torch.arange(30) % 3
    w = influence_weights(old_w, class_means(feats, labels, 3), torch.bincount(labels, minlength=3))
    assert w.shape == (3, 4)
    expect = torch.nn.functional.normalize(feats[labels == 2].mean(0), dim=0)
    torch.testing.assert_close(w[2], expect)
    with pytest.raises(ValueError, match="no samples"):
        influence_weights(old_w, class_means(feats, labels, 4), torch.bincount(labels, minlength=4))


def test_bct_loss_prefers_features_aligned_with_the_old_classifier():
    w = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    loss = BCTLoss(w)
    labels = torch.arange(5)
    aligned = loss(torch.cat([w, torch.randn(5, 4)], dim=1), labels)  # extra dims are ignored
    shuffled = loss(w[[1, 2, 3, 4, 0]], labels)
    assert aligned["total"] < 1.0 < shuffled["total"]
    assert not any(p.requires_grad for p in loss.parameters())


def _setup() -> DecodedImages:
    train, _ = load_digits_splits()
    return DecodedImages.of(train.head_per_class(20), SPEC)


class Interrupt(Exception):
    pass


def test_resume_after_interruption_matches_a_straight_run(tmp_path):
    data = _setup()
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.05, crop_padding=1, flip=False, progress=False)
    steps_per_epoch = (len(data.labels) + 31) // 32

    def run(ckpt: str | None, stop_at_step: int | None = None) -> ImageEmbedder:
        torch.manual_seed(0)
        model, clf = ImageEmbedder(SPEC), CosineClassifier(16, 10)
        calls = {"n": 0}

        def interrupting(feats, labels, _x):
            calls["n"] += 1
            if stop_at_step is not None and calls["n"] > stop_at_step:
                raise Interrupt
            return {"total": feats.sum() * 0.0}

        train_image_model(model, clf, data, SPEC, TrainConfig(**{**cfg.__dict__, "checkpoint_dir": ckpt}), compat_loss=interrupting)
        return model

    straight = run(None)
    with pytest.raises(Interrupt):
        run(str(tmp_path / "ck"), stop_at_step=2 * steps_per_epoch + 1)  # dies inside epoch 3
    assert torch.load(tmp_path / "ck" / "last.pt", weights_only=False)["epoch"] == 2
    resumed = run(str(tmp_path / "ck"))
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_training_learns_digits():
    train, test = load_digits_splits()
    spec = ImageModelSpec(width=0.25, in_channels=1, image_size=16, embed_dim=32, mean=(0.3,), std=(0.4,))
    torch.manual_seed(0)
    model, clf = ImageEmbedder(spec), CosineClassifier(32, 10)
    hist = train_image_model(model, clf, DecodedImages.of(train, spec), spec, TrainConfig(epochs=15, batch_size=64, lr=0.1, crop_padding=2, flip=False, progress=False))
    assert hist[-1]["ce"] < hist[0]["ce"] * 0.5
    with torch.no_grad():
        acc = (clf(model(to_batch(test.images, spec))).argmax(1) == torch.from_numpy(test.labels)).float().mean().item()
    assert acc > 0.8  # held-out digits; chance is 0.1
