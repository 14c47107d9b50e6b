"""The Python API: `compatret.open` / `compatret.create` give one `Index` for a gallery, single or
sharded, with every job the CLI and the HTTP server run (they call these same methods).

    import compatret
    index = compatret.create("gallery", model="minilm-l6")
    index.add(["a first text", "a second text"], ids=["a", "b"], metadatas=[{"lang": "en"}, {"lang": "en"}])
    hits = index.query(["which text comes first?"], k=1)[0]
    index.upgrade("models/v2")          # O(1): old vectors keep serving
    index.backfill(fraction=0.5)        # optional, resumable
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from compatret.api.index import Index
from compatret.api.rows import Where

if TYPE_CHECKING:
    from compatret.encoders import Encoder

__all__ = ["Index", "Where", "create", "load_model", "open"]


def open(path: str | Path, kernel: str = "auto", refresh_seconds: float = 0.0) -> Index:  # noqa: A001 (the verb users expect)
    """The gallery in `path`, single or sharded; refresh_seconds > 0 lets queries read a view up to
    that old (servers), 0 reads the latest version on every query."""
    from compatret.engine.sharded import open_gallery

    return Index(open_gallery(path, kernel, refresh_seconds))


def create(
    path: str | Path,
    model: str | None = None,
    *,
    dim: int | None = None,
    version_id: str | None = None,
    modality: str | None = None,
    shards: int | None = None,
    ann: str = "auto",
    merge: str = "raw",
) -> Index:
    """A new, empty gallery served by `model` (an alias such as minilm-l6, or a model folder), or,
    for vectors made elsewhere, by an external model named `version_id` of `dim` dimensions."""
    from compatret.engine.service import Service
    from compatret.engine.sharded import ShardedService

    options: dict[str, Any] = {"model": model, "dim": dim, "version_id": version_id, "modality": modality, "ann": ann, "merge": merge}
    if shards is None:
        return Index(Service.create(path, **options))
    return Index(ShardedService.create(path, shards, **options))


def load_model(spec: str, device: str | None = None) -> Encoder:
    """An encoder (`encode_queries`, `encode_items`, `version`) from an alias, model folder or endpoint spec."""
    from compatret.encoders.registry import load_encoder

    return load_encoder(spec, device)
