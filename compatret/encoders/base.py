"""The Encoder protocol every model kind implements, and the folder layout they share."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from compatret.core.lineage import ModelVersion

ENCODER_FILE = "encoder.json"


@runtime_checkable
class Encoder(Protocol):
    """Embeds queries and items into the space named by `version` (float32, L2-normalised)."""

    version: ModelVersion

    @property
    def dim(self) -> int: ...

    def encode_queries(self, queries: Sequence[Any], batch_size: int = 64, progress: bool = False) -> np.ndarray: ...

    def encode_items(self, items: Sequence[Any], batch_size: int = 64, progress: bool = False) -> np.ndarray: ...


def write_encoder_config(model_dir: str | Path, kind: str, **settings: Any) -> None:
    """Record which Encoder class reads a model folder (and its settings)."""
    Path(model_dir, ENCODER_FILE).write_text(json.dumps({"kind": kind, **settings}, indent=2))


def item_text(item: Any) -> str:
    """Text of an item: a plain string, or BEIR-style {"title", "text"} joined by a space."""
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        title = item.get("title") or ""
        text = item.get("text") or ""
        return f"{title} {text}".strip()
    raise TypeError(f"cannot read text from {type(item).__name__}")
