"""Damaged files on purpose: what bit rot or a torn write leaves, for the fault tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def bitrot(file: Path, keep: int = 128, seed: int = 1) -> None:
    """Random bytes over a file after its first `keep` bytes: same size, other content."""
    size = file.stat().st_size
    with open(file, "r+b") as f:
        f.seek(keep)
        f.write(np.random.default_rng(seed).bytes(max(0, size - keep)))
