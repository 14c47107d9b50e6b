"""A query-only upgrade (ADORE): new query tower, the frozen old encoder for items.

The gallery keeps the old item vectors, so items added after the upgrade must be embedded
by the same old encoder; the model folder records it as `item_encoder` in encoder.json.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

import numpy as np

from compatret.core.lineage import ModelVersion
from compatret.encoders.base import Encoder


class TwoTowerEncoder:
    """encode_queries with the trained query tower, encode_items with the frozen item encoder,
    loaded on first use: a query (or an evaluation) never pays for a second model."""

    def __init__(self, queries: Encoder, load_items: Callable[[], Encoder], version: ModelVersion) -> None:
        self.queries = queries
        self._load_items = load_items
        self.version = version

    @cached_property
    def items(self) -> Encoder:
        return self._load_items()

    @property
    def dim(self) -> int:
        return self.version.dim

    def encode_queries(self, queries: Sequence[Any], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return self.queries.encode_queries(queries, batch_size, progress)

    def encode_items(self, items: Sequence[Any], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return self.items.encode_items(items, batch_size, progress)
