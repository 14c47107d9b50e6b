"""Training checkpoints: written whole or not at all, read back with tensors only (no pickled code)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` beside `path`, then rename it into place: a kill leaves the previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, device: str) -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=True)
