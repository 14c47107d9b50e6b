"""A gallery: one LanceDB table on local disk whose schema carries the model lineage."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from compatret.errors import CompatretError
from compatret.versions import ModelVersion

os.environ.setdefault("LANCEDB_LOG", "error")

TABLE = "gallery"
META_KEY = "compatret"
FORMAT = 1


@dataclass(frozen=True)
class GalleryMeta:
    """What a gallery knows about itself; stored in the `vector` field's metadata.

    vector_model made (the space of) the stored vectors; serving embeds queries and new
    items. `sources` maps model ids to the spec their weights load from.
    """

    dim: int
    vector_model: ModelVersion
    serving: ModelVersion
    modality: str = "text"
    metric: str = "cosine"
    sources: dict[str, str] = field(default_factory=dict)
    history: tuple[dict[str, Any], ...] = ()

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
        )


def _schema(meta: GalleryMeta) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("text", pa.string()),
            pa.field("image", pa.binary()),
            pa.field("metadata", pa.string()),
            pa.field("model_version", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), meta.dim), metadata={META_KEY: meta.to_json()}),
        ]
    )


def _connect(path: Path) -> Any:
    import lancedb

    return lancedb.connect(str(path))


class Gallery:
    """The durable half of an index: rows in LanceDB, each write one atomic commit."""

    def __init__(self, path: Path, table: Any) -> None:
        self.path = path
        self.table = table
        self._meta: tuple[int, GalleryMeta] | None = None

    @staticmethod
    def create(path: str | Path, meta: GalleryMeta) -> Gallery:
        p = Path(path)
        if (p / f"{TABLE}.lance").exists():
            raise CompatretError(f"{p} already holds a gallery")
        if meta.metric != "cosine":
            raise CompatretError(f"unsupported metric {meta.metric!r}: compatret scores by cosine")
        p.mkdir(parents=True, exist_ok=True)
        table = _connect(p).create_table(TABLE, schema=_schema(meta))
        return Gallery(p, table)

    @staticmethod
    def open(path: str | Path) -> Gallery:
        p = Path(path)
        if not (p / f"{TABLE}.lance").exists():
            raise CompatretError(f"no gallery at {p} (create one with `compatret index create`)")
        return Gallery(p, _connect(p).open_table(TABLE))

    @property
    def meta(self) -> GalleryMeta:
        return self.meta_at(self.version)

    def meta_at(self, version: int) -> GalleryMeta:
        """The metadata of the current table, parsed once per table version (queries stay cheap)."""
        if self._meta is None or self._meta[0] != version:
            raw = (self.table.schema.field("vector").metadata or {}).get(META_KEY.encode())
            if raw is None:
                raise CompatretError(f"{self.path} is a LanceDB table without compatret metadata")
            self._meta = (version, GalleryMeta.from_json(raw.decode()))
        return self._meta[1]

    def set_meta(self, meta: GalleryMeta) -> None:
        """One metadata-only commit: O(1) whatever the gallery size."""
        self.table.update_field_metadata({"path": "vector", "metadata": {META_KEY: meta.to_json()}})

    def record(self, event: str, **details: Any) -> GalleryMeta:
        """Append an event to the gallery history (returned, not yet written)."""
        import datetime as dt

        entry = {"event": event, "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **details}
        return replace(self.meta, history=(*self.meta.history, entry))

    @property
    def version(self) -> int:
        return int(self.table.version)

    def count(self) -> int:
        return int(self.table.count_rows())

    def add_rows(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        model_version: str,
        texts: Sequence[str | None] | None = None,
        images: Sequence[bytes | None] | None = None,
        metadata: Sequence[dict[str, Any] | None] | None = None,
    ) -> int:
        """Append one batch as a single commit; returns the new table version."""
        n = len(ids)
        dim = self.meta.dim
        if vectors.shape != (n, dim):
            raise CompatretError(f"vectors have shape {vectors.shape}, expected ({n}, {dim})")
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
        batch = pa.table(
            {
                "id": pa.array([str(i) for i in ids], pa.string()),
                "text": pa.array(list(texts) if texts is not None else [None] * n, pa.string()),
                "image": pa.array(list(images) if images is not None else [None] * n, pa.binary()),
                "metadata": pa.array(
                    [json.dumps(m) if m else None for m in metadata] if metadata is not None else [None] * n, pa.string()
                ),
                "model_version": pa.array([model_version] * n, pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
            },
            schema=self.table.schema,
        )
        self.table.add(batch)
        return self.version

    def delete(self, ids: Sequence[str]) -> int:
        """Delete rows by id in one commit; returns the new table version."""
        if ids:
            quoted = ", ".join("'" + str(i).replace("'", "''") + "'" for i in ids)
            self.table.delete(f"id IN ({quoted})")
        return self.version

    def scan_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """All (ids, vectors), reading only those two columns, for (re)building the search index."""
        dim = self.meta.dim
        n = self.count()
        if n == 0:
            return np.zeros(0, dtype=str), np.zeros((0, dim), np.float32)
        t = self.table.search().select(["id", "vector"]).limit(n).to_arrow()
        ids = t.column("id").to_numpy().astype(str)
        vec = t.column("vector").combine_chunks().values.to_numpy().reshape(-1, dim)
        return ids, np.ascontiguousarray(vec, dtype=np.float32)

    def fetch(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Payloads (text, image, metadata, model_version) of the given ids."""
        if not ids:
            return {}
        quoted = ", ".join("'" + str(i).replace("'", "''") + "'" for i in set(ids))
        rows = (
            self.table.search()
            .where(f"id IN ({quoted})")
            .select(["id", "text", "image", "metadata", "model_version"])
            .limit(len(set(ids)))
            .to_arrow()
            .to_pylist()
        )
        out = {}
        for r in rows:
            r["metadata"] = json.loads(r["metadata"]) if r["metadata"] else None
            out[r["id"]] = r
        return out

