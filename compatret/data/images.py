"""Image data sets: the shared parquet layout (JPEG bytes + label) and scikit-learn's bundled digits."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compatret.core.errors import CompatretError


@dataclass(frozen=True)
class ImageSplit:
    """Encoded images (bytes) with integer labels and the class names."""

    images: list[bytes]
    labels: np.ndarray
    classes: list[str]

    def subset(self, mask: np.ndarray) -> ImageSplit:
        idx = np.flatnonzero(mask)
        return ImageSplit([self.images[i] for i in idx], self.labels[idx], self.classes)

    def head_per_class(self, n: int) -> ImageSplit:
        """The first n images of every class (for quick runs)."""
        keep = np.zeros(len(self.labels), bool)
        for c in np.unique(self.labels):
            keep[np.flatnonzero(self.labels == c)[:n]] = True
        return self.subset(keep)


def load_parquet_split(folder: str | Path, split: str) -> ImageSplit:
    """`<folder>/<split>.parquet` with columns image (bytes) and label; classes in schema metadata."""
    import pyarrow.parquet as pq

    path = Path(folder) / f"{split}.parquet"
    if not path.exists():
        raise CompatretError(f"no {split}.parquet in {folder}")
    table = pq.read_table(path)
    if not {"image", "label"} <= set(table.column_names):
        raise CompatretError(f"{path} needs columns image and label")
    labels = table.column("label").to_numpy().astype(np.int64)
    meta = table.schema.metadata or {}
    classes = json.loads(meta[b"classes"]) if b"classes" in meta else [str(c) for c in range(labels.max() + 1)]
    return ImageSplit(table.column("image").to_pylist(), labels, classes)


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def load_digits_splits(test_fraction: float = 0.3, seed: int = 0) -> tuple[ImageSplit, ImageSplit]:
    """scikit-learn's 1,797 handwritten digits (8x8, shipped with the package), split per class."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    pixels = (d.images / 16.0 * 255).round().astype(np.uint8)
    idx_train, idx_test = train_test_split(np.arange(len(pixels)), test_size=test_fraction, random_state=seed, stratify=d.target)
    classes = [str(c) for c in range(10)]

    def split(idx: np.ndarray) -> ImageSplit:
        return ImageSplit([png(pixels[i]) for i in idx], d.target[idx].astype(np.int64), classes)

    return split(idx_train), split(idx_test)
