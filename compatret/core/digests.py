"""Digests of model weights: the same version id must always mean the same weights."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".onnx", ".npy", ".npz")
NOT_WEIGHTS = ("checkpoint", "checkpoints")  # training state, deleted or rewritten after the record


def weights_digest(model_dir: str | Path) -> str | None:
    """sha256 over a model folder's weight files (names and bytes), or None when it has none.

    Identity by content: two folders whose records share an id are the same model only if this
    matches. Training checkpoints are left out (they are rewritten, then deleted).
    """
    root = Path(model_dir)
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix in WEIGHT_SUFFIXES and p.is_file() and not set(p.relative_to(root).parts[:-1]) & set(NOT_WEIGHTS)
    )
    if not files:
        return None
    return _digest(str(root), tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


@functools.lru_cache(maxsize=256)
def _digest(root: str, files: tuple[tuple[str, int, int], ...]) -> str:
    """The digest of files named with their size and mtime: a changed file is a new key, so read again."""
    h = hashlib.sha256()
    for name, _, _ in files:
        path = Path(name)
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):  # noqa: B023  f is read inside this iteration only
                h.update(block)
    return "sha256:" + h.hexdigest()
