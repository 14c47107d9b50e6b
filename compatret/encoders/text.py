"""sentence-transformers text encoders, loaded from a local folder (or a hub name, given network)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from compatret.core.lineage import ModelVersion
from compatret.encoders.base import item_text


class SentenceTransformerEncoder:
    """Wraps a SentenceTransformer; query and item prompts are applied when the model has them."""

    def __init__(self, model_path: str | Path, version: ModelVersion, device: str | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(str(model_path), device=device)
        self.version = version

    @property
    def dim(self) -> int:
        return self.version.dim

    def _encode(self, texts: list[str], batch_size: int, progress: bool, prompt_name: str | None) -> np.ndarray:
        if prompt_name is not None and prompt_name not in (self.model.prompts or {}):
            prompt_name = None
        vecs = self.model.encode(
            texts,
            batch_size=batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
            prompt_name=prompt_name,
        )
        return np.asarray(vecs, dtype=np.float32)

    def encode_queries(self, queries: Sequence[Any], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return self._encode([item_text(q) for q in queries], batch_size, progress, "query")

    def encode_items(self, items: Sequence[Any], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return self._encode([item_text(i) for i in items], batch_size, progress, "document")
