"""Two small real image models on scikit-learn's bundled digits, trained in seconds.

Benchmarks of the index (crash safety, concurrent writers, HTTP load) need a real encoder
and a compatible successor, not a good one: v1 sees digits 0-6, v2 is trained with BCT on
all ten, so v2 queries read v1 rows (identity rule).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compatret.data.images import load_digits_splits, png
from compatret.encoders.image import ImageModelSpec
from compatret.train.image.methods import MethodSpec, fit_image_version
from compatret.train.image.trainer import TrainConfig


def digit_model_pair(work: Path, embed_dim: int = 32, epochs: int = 5) -> tuple[str, str]:
    """Folders of v1 and its BCT-compatible v2 under `work` (reused when already trained)."""
    train, _ = load_digits_splits(test_fraction=0.3)
    spec = ImageModelSpec(width=0.125, in_channels=1, image_size=8, embed_dim=embed_dim, mean=(0.3,), std=(0.4,))
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=0.1, crop_padding=1, flip=False, progress=False)
    if not (work / "v1" / "compatret_version.json").exists():
        fit_image_version("v1", MethodSpec("independent"), train.subset(train.labels < 7), spec, cfg, work / "v1")
    if not (work / "v2" / "compatret_version.json").exists():
        fit_image_version("v2", MethodSpec("bct", num_classes=10, align_weight=1.0), train, spec, cfg, work / "v2", parent_dir=work / "v1")
    return str(work / "v1"), str(work / "v2")


def noisy_digit_images(n: int, seed: int = 0) -> list[bytes]:
    """n distinct PNG images: the 1,797 digits, each copy with its own pixel noise."""
    from sklearn.datasets import load_digits

    pixels = (load_digits().images / 16.0 * 255).astype(np.float32)
    rng = np.random.default_rng(seed)
    return [png(np.clip(pixels[i % len(pixels)] + rng.normal(0, 12, size=(8, 8)), 0, 255).astype(np.uint8)) for i in range(n)]
