"""What a gallery records about itself in the table's schema metadata: dim, models, lineage, history."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from compatret.core.errors import CompatretError
from compatret.core.lineage import ModelVersion

META_KEY = "compatret"
FORMAT = 1


@dataclass
class Group:
    """The rows whose current vector was made by one model version."""

    version: str
    ids: np.ndarray  # object array of str: hits become lists without conversion
    vectors: np.ndarray  # float32 [n, dim of that version], L2-normalised


@dataclass(frozen=True)
class GalleryMeta:
    """What a gallery knows about itself; stored in the `vector` field's metadata.

    vector_model made the gallery's first vectors (column `vector`, `dim` wide); serving
    embeds queries, new items and backfilled rows. `versions` holds the record of every model
    that has written rows (each row names its own in `model_version`); `sources` maps model
    ids to the spec their weights load from. `ann` picks the search structure, `merge` how
    scores from rows of different versions are ranked together (see Service.query).
    """

    dim: int
    vector_model: ModelVersion
    serving: ModelVersion
    modality: str = "text"
    metric: str = "cosine"
    sources: dict[str, str] = field(default_factory=dict)
    history: tuple[dict[str, Any], ...] = ()
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    ann: str = "auto"
    merge: str = "raw"

    @property
    def serving_source(self) -> str | None:
        """What loads the serving model (an alias or a folder); None for a gallery of bare vectors."""
        return self.sources.get(self.serving.id)

    def version(self, version_id: str) -> ModelVersion:
        """The record of a model that wrote rows here."""
        if version_id == self.vector_model.id:
            return self.vector_model
        if version_id not in self.versions:
            raise CompatretError(f"rows of unknown model version {version_id!r} in {self.vector_model.id} gallery")
        return self.versions[version_id]

    def column(self, version: ModelVersion) -> str:
        """The vector column a model's rows live in: one column per vector width."""
        return "vector" if version.dim == self.dim else f"vector_{version.dim}"

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "dim": self.dim,
                "metric": self.metric,
                "modality": self.modality,
                "vector_model": self.vector_model.to_dict(),
                "serving": self.serving.to_dict(),
                "sources": self.sources,
                "history": list(self.history),
                "versions": {k: v.to_dict() for k, v in self.versions.items()},
                "ann": self.ann,
                "merge": self.merge,
            }
        )

    @staticmethod
    def from_json(text: str) -> GalleryMeta:
        d = json.loads(text)
        if d.get("format") != FORMAT:
            raise CompatretError(f"unsupported gallery format {d.get('format')!r}")
        return GalleryMeta(
            dim=int(d["dim"]),
            vector_model=ModelVersion.from_dict(d["vector_model"]),
            serving=ModelVersion.from_dict(d["serving"]),
            modality=d.get("modality", "text"),
            metric=d.get("metric", "cosine"),
            sources=dict(d.get("sources", {})),
            history=tuple(d.get("history", [])),
            versions={k: ModelVersion.from_dict(v) for k, v in d.get("versions", {}).items()},
            ann=d.get("ann", "auto"),
            merge=d.get("merge", "raw"),
        )


def _schema(meta: GalleryMeta) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("title", pa.string()),
            pa.field("text", pa.string()),
            pa.field("image", pa.binary()),
            pa.field("metadata", pa.string()),
            pa.field("model_version", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), meta.dim), metadata={META_KEY: meta.to_json()}),
        ]
    )


def meta_of_schema(schema: pa.Schema, where: Path) -> GalleryMeta:
    """The compatret metadata kept in a table schema's `vector` field."""
    raw = (schema.field("vector").metadata or {}).get(META_KEY.encode())
    if raw is None:
        raise CompatretError(f"{where} is a LanceDB table without compatret metadata")
    return GalleryMeta.from_json(raw.decode())
