"""A gallery: one LanceDB table on local disk whose schema carries the model lineage."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa

from compatret.errors import CompatretError
from compatret.versions import ModelVersion

os.environ.setdefault("LANCEDB_LOG", "error")

TABLE = "gallery"
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

    def open_snapshot(self) -> Any:
        """A second handle on the same table, for reading old versions without moving this one."""
        return _connect(self.path).open_table(TABLE)

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

    def ensure_column(self, version: ModelVersion) -> str:
        """Register a model that is about to write rows: its record and its vector column."""
        meta = self.meta
        col = meta.column(version)
        if col not in self.table.schema.names:
            self.table.add_columns(pa.field(col, pa.list_(pa.float32(), version.dim)))
        if version.id != meta.vector_model.id and meta.versions.get(version.id) != version:
            self.set_meta(replace(self.meta, versions={**meta.versions, version.id: version}))
        return col

    def _vector_array(self, vectors: np.ndarray, dim: int) -> pa.Array:
        flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
        return pa.FixedSizeListArray.from_arrays(flat, dim)

    def add_rows(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        version: ModelVersion,
        texts: Sequence[str | None] | None = None,
        images: Sequence[bytes | None] | None = None,
        metadata: Sequence[dict[str, Any] | None] | None = None,
        titles: Sequence[str | None] | None = None,
    ) -> int:
        """Append one batch as a single commit; returns the new table version."""
        n = len(ids)
        if vectors.shape != (n, version.dim):
            raise CompatretError(f"vectors have shape {vectors.shape}, expected ({n}, {version.dim})")
        col = self.ensure_column(version)
        columns: dict[str, Any] = {
            "id": pa.array([str(i) for i in ids], pa.string()),
            "title": pa.array(list(titles) if titles is not None else [None] * n, pa.string()),
            "text": pa.array(list(texts) if texts is not None else [None] * n, pa.string()),
            "image": pa.array(list(images) if images is not None else [None] * n, pa.binary()),
            "metadata": pa.array(
                [json.dumps(m) if m else None for m in metadata] if metadata is not None else [None] * n, pa.string()
            ),
            "model_version": pa.array([version.id] * n, pa.string()),
        }
        schema = self.table.schema
        for name in schema.names:
            if name.startswith("vector"):
                dim = schema.field(name).type.list_size
                columns[name] = self._vector_array(vectors, dim) if name == col else pa.nulls(n, schema.field(name).type)
        self.table.add(pa.table(columns, schema=schema))
        return self.version

    def update_vectors(self, ids: Sequence[str], vectors: np.ndarray, version: ModelVersion) -> int:
        """Replace the vectors of existing rows (a backfill batch) in one commit."""
        col = self.ensure_column(version)
        batch = pa.table(
            {
                "id": pa.array([str(i) for i in ids], pa.string()),
                "model_version": pa.array([version.id] * len(ids), pa.string()),
                col: self._vector_array(vectors, version.dim),
            }
        )
        self.table.merge_insert("id").when_matched_update_all().execute(batch)
        return self.version

    def delete(self, ids: Sequence[str]) -> int:
        """Delete rows by id in one commit; returns the new table version."""
        if ids:
            self.table.delete(_id_filter(ids))
        return self.version

    def scan_groups(self) -> dict[str, Group]:
        """All rows' ids and current vectors, grouped by the model version that made them."""
        meta = self.meta
        n = self.count()
        if n == 0:
            return {}
        cols = [c for c in self.table.schema.names if c.startswith("vector")]
        t = self.table.search().select(["id", "model_version", *cols]).limit(n).to_arrow()
        versions = t.column("model_version").to_numpy(zero_copy_only=False).astype(str)
        ids = t.column("id").to_numpy(zero_copy_only=False).astype(str).astype(object)
        groups: dict[str, Group] = {}
        for v in np.unique(versions):
            record = meta.version(str(v))
            mask = versions == v
            col = t.column(meta.column(record)).filter(pa.array(mask)).combine_chunks()
            vec = col.values.to_numpy(zero_copy_only=False).reshape(-1, record.dim)
            groups[str(v)] = Group(str(v), ids[mask], np.ascontiguousarray(vec, dtype=np.float32))
        return groups

    def payloads(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Raw text/title/image of rows, for re-embedding them."""
        return self._rows(ids, ["id", "title", "text", "image"])

    def fetch(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Payloads (text, image, metadata, model_version) of the given ids."""
        rows = self._rows(ids, ["id", "title", "text", "image", "metadata", "model_version"])
        for r in rows.values():
            r["metadata"] = json.loads(r["metadata"]) if r["metadata"] else None
        return rows

    def _rows(self, ids: Sequence[str], columns: list[str]) -> dict[str, dict[str, Any]]:
        unique = set(ids)
        if not unique:
            return {}
        rows = self.table.search().where(_id_filter(unique)).select(columns).limit(len(unique)).to_arrow().to_pylist()
        return {r["id"]: r for r in rows}


def _id_filter(ids: Iterable[str]) -> str:
    """A SQL filter matching these ids (quotes escaped)."""
    quoted = ", ".join("'" + str(i).replace("'", "''") + "'" for i in ids)
    return f"id IN ({quoted})"
