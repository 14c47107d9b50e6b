"""Training images as a stream: sources that read one image at a time (a parquet file, a folder of
class folders, or images already in memory), per-image augmentation, and one global batch order.

Memory does not grow with the data set: a source keeps only its labels (one integer per image)
and, of a parquet file, the row groups one shuffle window spans (encoded bytes, per loader
worker): images are shuffled within windows of row groups holding at most `shuffle_mb`, with the
windows' order shuffled too. A set smaller than that is shuffled whole; a larger one whose file is
sorted by class should be written shuffled (a window of few classes makes poor batches). The order
of an epoch and every image's augmentation are drawn from (seed, epoch, image) alone, so a run
gives the same batches whatever its number of loader workers or processes: a data-parallel run on
W processes splits each global batch W ways (see `RankBatches`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.nn import functional as F

from compatret.core.errors import CompatretError
from compatret.data.images import ImageSplit
from compatret.encoders.image import ImageModelSpec, decode_image, to_batch

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")


class ImageSource(Protocol):
    """Images readable one at a time; `labels` (one int per image) is all it holds per image."""

    labels: np.ndarray

    def read(self, i: int) -> Any: ...

    def blocks(self) -> list[np.ndarray]: ...


class ParquetImages:
    """`image` (bytes) and `label` columns of a parquet file, read by row group on demand; `rows`
    picks the rows used (a class range, N per class), in file order."""

    def __init__(self, path: str | Path, rows: np.ndarray | None = None) -> None:
        import pyarrow.parquet as pq

        self.path = Path(path)
        meta = pq.ParquetFile(self.path).metadata
        sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        self._group_bytes = [meta.row_group(g).total_byte_size for g in range(meta.num_row_groups)]
        self.window = 1  # row groups shuffled together, and cached by each worker (training sets it: shuffled_in)
        self._starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        labels = pq.read_table(self.path, columns=["label"]).column("label").to_numpy().astype(np.int64)
        self.rows = np.arange(len(labels), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self.labels = labels[self.rows]
        self._group_cache: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_group_cache": None}  # a worker reads (and caches) on its own

    def _group(self, g: int) -> list[bytes]:
        if self._group_cache is None:
            import pyarrow.parquet as pq

            handle = pq.ParquetFile(self.path)
            self._group_cache = functools.lru_cache(maxsize=self.window)(
                lambda n: handle.read_row_group(n, columns=["image"]).column("image").to_pylist()
            )
        return self._group_cache(g)

    def read(self, i: int) -> bytes:
        row = int(self.rows[i])
        g = int(np.searchsorted(self._starts, row, side="right")) - 1
        return self._group(g)[row - int(self._starts[g])]

    def blocks(self) -> list[np.ndarray]:
        group = np.searchsorted(self._starts, self.rows, side="right") - 1
        return [np.flatnonzero(group == g) for g in np.unique(group)]

    def subset(self, keep: np.ndarray) -> ParquetImages:
        out = ParquetImages.__new__(ParquetImages)
        out.__dict__.update(self.__getstate__())
        out.rows, out.labels = self.rows[keep], self.labels[keep]
        return out

    def shuffled_in(self, shuffle_mb: float) -> ParquetImages:
        """A copy that shuffles within windows of row groups holding at most `shuffle_mb` (at least one group)."""
        out = self.subset(np.ones(len(self.rows), dtype=bool))
        mean = float(np.mean(self._group_bytes)) if self._group_bytes else 1.0
        out.window = int(max(1, min(len(self._group_bytes), shuffle_mb * 2**20 // max(mean, 1.0))))
        return out


class FolderImages:
    """A folder of class folders (`root/<class>/<image>`, as torchvision's ImageFolder): classes
    are the folder names in sorted order, labels their positions."""

    def __init__(self, root: str | Path, files: list[Path] | None = None, labels: np.ndarray | None = None) -> None:
        self.root = Path(root)
        self.classes = sorted(p.name for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else []
        if files is None:
            found = [
                (f, n) for n, c in enumerate(self.classes) for f in sorted((self.root / c).rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES
            ]
            files, labels = [f for f, _ in found], np.array([n for _, n in found], dtype=np.int64)
        if not files:
            raise CompatretError(f"no images in class folders under {self.root} (expected {self.root}/<class>/<image>)")
        self.files, self.labels = files, np.asarray(labels, dtype=np.int64)

    def read(self, i: int) -> bytes:
        return self.files[i].read_bytes()

    def blocks(self) -> list[np.ndarray]:
        return [np.arange(len(self.files))]  # files are read one by one: any order costs the same

    def subset(self, keep: np.ndarray) -> FolderImages:
        return FolderImages(self.root, [self.files[i] for i in np.flatnonzero(keep)], self.labels[keep])


class DecodedImages:
    """Images decoded and normalised once, in memory (small sets: the quickstart's digits, tests)."""

    def __init__(self, x: torch.Tensor, labels: np.ndarray | torch.Tensor) -> None:
        self.x, self.labels = x, np.asarray(labels, dtype=np.int64)

    @staticmethod
    def of(split: ImageSplit, spec: ImageModelSpec) -> DecodedImages:
        return DecodedImages(to_batch(split.images, spec), split.labels)

    def read(self, i: int) -> torch.Tensor:
        return self.x[i]

    def blocks(self) -> list[np.ndarray]:
        return [np.arange(len(self.labels))]


@dataclass(frozen=True)
class Augment:
    """Per-image training augmentation: `crop` (a random crop of the image padded by `padding`, as
    the CIFAR protocols), `resized_crop` (a random area in `scale` and aspect ratio 3/4..4/3,
    resized back, as the ImageNet protocols) or `none`; then a horizontal flip with p = 0.5."""

    kind: str = "crop"
    padding: int = 4
    flip: bool = True
    scale: tuple[float, float] = (0.08, 1.0)

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.kind == "crop" and self.padding > 0:
            dy, dx = rng.integers(0, 2 * self.padding + 1, size=2)
            x = F.pad(x, (self.padding,) * 4)[:, dy : dy + h, dx : dx + w]
        elif self.kind == "resized_crop":
            x = self._resized_crop(x, rng)
        if self.flip and rng.random() < 0.5:
            x = x.flip(-1)
        return x

    def _resized_crop(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        h, w = x.shape[-2:]
        for _ in range(10):
            area = h * w * rng.uniform(*self.scale)
            ratio = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
            ch, cw = round((area / ratio) ** 0.5), round((area * ratio) ** 0.5)
            if 0 < ch <= h and 0 < cw <= w:
                y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
                crop = x[None, :, y0 : y0 + ch, x0 : x0 + cw]
                return F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0]
        return x  # no draw fitted: the whole image, as torchvision falls back to


class TrainImages(torch.utils.data.Dataset[tuple[torch.Tensor, int, int]]):
    """Item (index, epoch, global batch size) -> (augmented image, label, global batch size)."""

    def __init__(self, source: ImageSource, spec: ImageModelSpec, augment: Augment | None, seed: int) -> None:
        self.source, self.spec, self.augment, self.seed = source, spec, augment, seed
        self._mean = torch.tensor(spec.mean[: spec.in_channels]).view(-1, 1, 1)  # as to_batch normalises, without its stack
        self._std = torch.tensor(spec.std[: spec.in_channels]).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.source.labels)

    def __getitem__(self, item: tuple[int, int, int]) -> tuple[torch.Tensor, int, int]:
        i, epoch, batch = item
        raw = self.source.read(i)
        x = raw if isinstance(raw, torch.Tensor) else (torch.from_numpy(decode_image(raw, self.spec)) - self._mean) / self._std
        if self.augment is not None:
            x = self.augment(x, np.random.default_rng([self.seed, epoch, i]))
        return x, int(self.source.labels[i]), batch


def epoch_order(source: ImageSource, seed: int, epoch: int) -> np.ndarray:
    """The images of one epoch in order: blocks (row groups) shuffled, then images shuffled within
    windows of the source's `window` blocks (all of them by default; a folder or memory is one block)."""
    rng = np.random.default_rng([seed, epoch, 7])
    blocks = source.blocks()
    blocks = [blocks[j] for j in rng.permutation(len(blocks))]
    window = max(1, int(getattr(source, "window", len(blocks)) or 1))
    parts = [np.concatenate(blocks[s : s + window]) for s in range(0, len(blocks), window)]
    return np.concatenate([p[rng.permutation(len(p))] for p in parts]) if parts else np.zeros(0, np.int64)


class RankBatches(torch.utils.data.Sampler[list[tuple[int, int, int]]]):
    """This process's part of every global batch of epochs `start`..`epochs - 1`: global batch k is
    images k*B..(k+1)*B-1 of the epoch's order, and process r of W takes every W-th of them from
    the r-th. A final global batch with fewer images than processes is left out (in every mode)."""

    def __init__(self, source: ImageSource, batch_size: int, seed: int, start: int, epochs: int, rank: int = 0, world: int = 1) -> None:
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.start, self.epochs, self.rank, self.world = start, epochs, rank, world

    def steps_per_epoch(self) -> int:
        n = len(self.source.labels)
        full, tail = divmod(n, self.batch_size)
        return full + (1 if tail >= self.world else 0)

    def __len__(self) -> int:
        return (self.epochs - self.start) * self.steps_per_epoch()

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for epoch in range(self.start, self.epochs):
            order = epoch_order(self.source, self.seed, epoch)
            for s in range(0, self.steps_per_epoch() * self.batch_size, self.batch_size):
                batch = order[s : s + self.batch_size]
                yield [(int(i), epoch, len(batch)) for i in batch[self.rank :: self.world]]


def in_order(source: ImageSource, batch_size: int, rank: int = 0, world: int = 1) -> Iterator[list[tuple[int, int, int]]]:
    """This process's share of every image once, unshuffled (features of the old model)."""
    mine = np.arange(len(source.labels))[rank::world]
    for s in range(0, len(mine), batch_size):
        yield [(int(i), 0, 0) for i in mine[s : s + batch_size]]
