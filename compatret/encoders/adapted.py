"""A model that embeds with another model, then maps the result through a fitted head.

What `compatret adapt --direction query` writes: a new model (say all-MiniLM-L6-v2) whose
vectors are mapped into the old model's space, so a gallery of old vectors keeps its space
and the old model can be retired (Drift-Adapter's setting). Items and queries take the same
path, so rows added or re-embedded later sit in the same space.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from compatret.core.lineage import ModelVersion
from compatret.core.transforms import LearnedMap, normalize
from compatret.encoders.base import Encoder


class AdaptedEncoder:
    """`base` encodes; `head` maps its vectors into `version`'s space (L2-normalised)."""

    def __init__(self, base: Encoder, head: LearnedMap, version: ModelVersion) -> None:
        self.base = base
        self.head = head
        self.version = version

    @property
    def dim(self) -> int:
        return self.version.dim

    def encode_queries(self, queries: Sequence[Any], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return normalize(self.head(self.base.encode_queries(queries, batch_size, progress)))

    def encode_items(self, items: Sequence[Any], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return normalize(self.head(self.base.encode_items(items, batch_size, progress)))
