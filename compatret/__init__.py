"""compatret: retrieval with backward-compatible embeddings (upgrade the model, keep the index).

The names users import: `compatret.open(path)` / `compatret.create(path, model=...)` give an
`Index` (see `compatret.api`); `load_model`, `train_image`, `train_text`. They load on first
use, so `import compatret` (and every command's start) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from compatret.core.errors import CompatretError
from compatret.core.lineage import Compat, ModelVersion

if TYPE_CHECKING:
    from compatret.api import Index, create, load_model
    from compatret.api import open as open  # noqa: A004 (compatret.open is the API verb; re-exported)
    from compatret.engine.results import NeedsAdapter, QueryResult
    from compatret.engine.service import Service
    from compatret.store.gallery import Gallery
    from compatret.store.meta import GalleryMeta
    from compatret.trainers import train_image, train_text

_LAZY = {
    "open": "compatret.api",
    "create": "compatret.api",
    "load_model": "compatret.api",
    "Index": "compatret.api",
    "train_image": "compatret.trainers",
    "train_text": "compatret.trainers",
    "Service": "compatret.engine.service",
    "QueryResult": "compatret.engine.results",
    "NeedsAdapter": "compatret.engine.results",
    "Gallery": "compatret.store.gallery",
    "GalleryMeta": "compatret.store.meta",
}
# `open` is public (compatret.open) but left out of __all__: a star import would shadow the builtin
__all__ = [
    "Compat",
    "CompatretError",
    "Gallery",
    "GalleryMeta",
    "Index",
    "ModelVersion",
    "NeedsAdapter",
    "QueryResult",
    "Service",
    "create",
    "load_model",
    "train_image",
    "train_text",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'compatret' has no attribute {name!r}")
