"""A gallery: one LanceDB table on local disk whose schema carries the model lineage."""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from compatret.errors import CompatretError
from compatret.index.sealed import no_space
from compatret.index.writer_lock import retry_commit, writer_lock
from compatret.versions import ModelVersion, normalize

os.environ.setdefault("LANCEDB_LOG", "error")
log = logging.getLogger("compatret.gallery")

TABLE = "gallery"
ID_FILTER_MAX = 1024  # ids per `id IN (...)` filter
ID_SCAN_FROM = 100_000  # ids checked at once: from here one pass over the id column is cheaper than lookups
ID_INDEX = "id_idx"
ID_INDEX_LAG = 100_000  # unindexed rows tolerated (a lookup scans them) before the id index is updated
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


def _connect(path: Path) -> Any:
    import lancedb

    return lancedb.connect(str(path))


def vector_array(vectors: np.ndarray, dim: int) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
    return pa.FixedSizeListArray.from_arrays(flat, dim)


PAYLOAD_COLUMNS = ("title", "text", "image", "metadata")


@dataclass(frozen=True)
class Payloads:
    """A batch's payload columns as the table stores them (metadata as JSON text); None: all null."""

    titles: Sequence[str | None] | None = None
    texts: Sequence[str | None] | None = None
    images: Sequence[bytes | None] | None = None
    metadata_json: Sequence[str | None] | None = None

    @staticmethod
    def of(table: pa.Table) -> Payloads:
        """The payload columns of rows read from the table."""
        return Payloads(*(table.column(c).to_pylist() for c in PAYLOAD_COLUMNS))


def item_inputs(rows: dict[str, dict[str, Any]], ids: Sequence[str], modality: str) -> list[Any]:
    """What an encoder embeds for stored rows (read with their payload columns): image bytes, or title and text."""
    if modality == "image":
        return [rows[i]["image"] for i in ids]
    return [{"title": rows[i].get("title"), "text": rows[i].get("text")} for i in ids]


def rows_table(schema: pa.Schema, column: str, version_id: str, ids: Sequence[str], vectors: np.ndarray,
               payloads: Payloads = Payloads()) -> pa.Table:
    """Rows as the table stores them: payload, the model version, the vectors in `column` and
    null in every other vector column. Every writer (add, backfill, Ray workers) builds rows here."""
    n = len(ids)
    columns: dict[str, Any] = {
        "id": pa.array([str(i) for i in ids], pa.string()),
        "title": pa.array(list(payloads.titles) if payloads.titles is not None else [None] * n, pa.string()),
        "text": pa.array(list(payloads.texts) if payloads.texts is not None else [None] * n, pa.string()),
        "image": pa.array(list(payloads.images) if payloads.images is not None else [None] * n, pa.binary()),
        "metadata": pa.array(list(payloads.metadata_json) if payloads.metadata_json is not None else [None] * n, pa.string()),
        "model_version": pa.array([version_id] * n, pa.string()),
    }
    for name in schema.names:
        if name.startswith("vector"):
            typ = schema.field(name).type
            columns[name] = vector_array(vectors, typ.list_size) if name == column else pa.nulls(n, typ)
    return pa.table(columns, schema=schema)


def commit_replacement(ds: Any, new_fragments: list[Any], old_addresses: np.ndarray) -> None:
    """One Lance `Update` against `ds`'s version: the new fragments in, the rows at `old_addresses`
    marked deleted in their fragments' deletion files (O(rows replaced), no table scan)."""
    import lance

    updated, removed = [], []
    for fid in np.unique(old_addresses >> 32):
        meta = ds.get_fragment(int(fid)).delete_rows((old_addresses[(old_addresses >> 32) == fid] & 0xFFFFFFFF).tolist())
        if meta is None:
            removed.append(int(fid))
        else:
            updated.append(meta)
    op = lance.LanceOperation.Update(removed_fragment_ids=removed, updated_fragments=updated, new_fragments=new_fragments)
    lance.LanceDataset.commit(ds, op, read_version=ds.version)


def meta_of_schema(schema: pa.Schema, where: Path) -> GalleryMeta:
    """The compatret metadata kept in a table schema's `vector` field."""
    raw = (schema.field("vector").metadata or {}).get(META_KEY.encode())
    if raw is None:
        raise CompatretError(f"{where} is a LanceDB table without compatret metadata")
    return GalleryMeta.from_json(raw.decode())


WRITTEN_MARK = ".written"  # touched after every write: servers read their writes (Service.index)


def announce_write(path: Path) -> None:
    """Tell readers of this gallery (other processes too) that a write ended: its mark gets a new
    nanosecond mtime, which needs no free space."""
    mark = path / WRITTEN_MARK
    try:
        mark.touch()
        now = time.time_ns()
        os.utime(mark, ns=(now, now))
    except OSError as exc:
        log.warning("%s: cannot mark a write for readers (%s): servers see it within --refresh-seconds", path, exc)


def written_mark(mark_file: str) -> tuple[int, int] | None:
    """What announce_write last left in `mark_file` (inode, mtime): a reader that saw another must
    read the latest version. Takes the file's path as a str: this runs once per query."""
    try:
        st = os.stat(mark_file)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


class Gallery:
    """The durable half of an index, and its only truth: rows in LanceDB, each write one commit.

    Writes go through `writing()`, which holds the gallery's writer lock and first moves
    this handle to the latest version, so a write never builds on a stale view.
    """

    def __init__(self, path: Path, table: Any) -> None:
        self.path = path
        self.table = table
        self._metas: dict[int, GalleryMeta] = {}
        self._datasets: dict[int, Any] = {}
        self._session: Any = None  # Lance's caches (index pages, metadata), shared across versions
        self._writing = 0  # > 0 while this handle holds the writer lock (see writing())
        self.mark_file = str(path / WRITTEN_MARK)  # see announce_write

    @staticmethod
    def exists(path: str | Path) -> bool:
        """Whether a gallery's table lives at `path`."""
        return (Path(path) / f"{TABLE}.lance").exists()

    @staticmethod
    def create(path: str | Path, meta: GalleryMeta) -> Gallery:
        p = Path(path)
        if Gallery.exists(p):
            raise CompatretError(f"{p} already holds a gallery")
        if meta.metric != "cosine":
            raise CompatretError(f"unsupported metric {meta.metric!r}: compatret scores by cosine")
        p.mkdir(parents=True, exist_ok=True)
        with writer_lock(p, "index create"):
            if Gallery.exists(p):
                raise CompatretError(f"{p} already holds a gallery")
            table = _connect(p).create_table(TABLE, schema=_schema(meta))
        return Gallery(p, table)

    @staticmethod
    def open(path: str | Path) -> Gallery:
        p = Path(path)
        if not Gallery.exists(p):
            raise CompatretError(f"no gallery at {p} (create one with `compatret index create`)")
        return Gallery(p, _connect(p).open_table(TABLE))

    def open_snapshot(self) -> Any:
        """A second handle on the same table, for reading old versions without moving this one."""
        return _connect(self.path).open_table(TABLE)

    def dataset(self, version: int | None = None) -> Any:
        """The Lance dataset at `version` (default: this handle's), for fragment-level reads.

        A version never changes once committed, so the last few are kept open; they share one
        Lance session, so the id index's pages are read once, not once per version (a backfill
        opens a new version per batch, and reloading the index grew with the table)."""
        import lance

        version = self.version if version is None else version
        ds = self._datasets.get(version)
        if ds is None:
            ds = lance.dataset(str(self.path / f"{TABLE}.lance"), version=version, session=self._session)
            self._session = ds.session()
            if len(self._datasets) > 4:
                self._datasets = {}
            self._datasets[version] = ds
        return ds

    def latest_version(self) -> int:
        """Move this handle to the newest committed version (other processes' writes included)."""
        self.table.checkout_latest()
        return self.version

    @contextmanager
    def writing(self, command: str) -> Iterator[None]:
        """Hold the writer lock and read the latest version: the frame of every write."""
        with writer_lock(self.path, command):
            self.table.checkout_latest()
            self._writing += 1
            try:
                yield
            except Exception as exc:
                if no_space(exc):
                    raise CompatretError(f"no space left on device: {command} in {self.path} (nothing of it was committed)") from exc
                raise
            finally:
                self._writing -= 1
                if not self._writing:
                    announce_write(self.path)

    def _writer(self) -> None:
        """Every commit goes through here: refused unless this handle holds the writer lock."""
        if not self._writing:
            raise CompatretError(f"internal: a write to {self.path} outside Gallery.writing()")

    @property
    def meta(self) -> GalleryMeta:
        return self.meta_at(self.version)

    def meta_at(self, version: int) -> GalleryMeta:
        """The metadata as committed at table `version` (parsed once per version; safe across threads)."""
        meta = self._metas.get(version)
        if meta is None:
            meta = meta_of_schema(self.dataset(version).schema, self.path)
            if len(self._metas) > 16:
                self._metas = {}
            self._metas[version] = meta
        return meta

    def set_meta(self, meta: GalleryMeta) -> None:
        """One metadata-only commit: O(1) whatever the gallery size."""
        self._writer()
        update = {"path": "vector", "metadata": {META_KEY: meta.to_json()}}
        retry_commit(lambda: self.table.update_field_metadata(update), "metadata update", self.table.checkout_latest)

    def with_event(self, event: str, **details: Any) -> GalleryMeta:
        """The current metadata with an event appended to its history (returned, not yet written)."""
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
        self._writer()
        meta = self.meta
        col = meta.column(version)
        if col not in self.table.schema.names:
            field_ = pa.field(col, pa.list_(pa.float32(), version.dim))
            retry_commit(lambda: self.table.add_columns(field_), "new vector column", self.table.checkout_latest)
        if version.id != meta.vector_model.id and meta.versions.get(version.id) != version:
            self.set_meta(replace(self.meta, versions={**meta.versions, version.id: version}))
        return col

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
        self._writer()
        n = len(ids)
        if vectors.shape != (n, version.dim):
            raise CompatretError(f"vectors have shape {vectors.shape}, expected ({n}, {version.dim})")
        col = self.ensure_column(version)
        meta_json = [json.dumps(m) if m else None for m in metadata] if metadata is not None else None
        batch = rows_table(self.table.schema, col, version.id, ids, vectors, Payloads(titles, texts, images, meta_json))
        retry_commit(lambda: self.table.add(batch), "add", self.table.checkout_latest)
        return self.version

    def update_vectors(self, ids: Sequence[str], vectors: np.ndarray, version: ModelVersion) -> int:
        """Replace the vectors of existing rows (a backfill batch) in one commit: O(batch).

        The rows are found by id in the table (with their row addresses); only rows still
        present and not yet written by `version` are touched, so a row deleted since the batch
        was read stays deleted and a row another backfill wrote meanwhile is left as it is.
        Their new versions are written as one new fragment, the old ones are marked deleted in
        their fragments' deletion files, and one Lance `Update` commits both. (merge_insert does
        the same, but its join grows with the table.) Returns the new table version.
        """
        import lance

        self._writer()
        if not len(ids):
            return self.version
        col = self.ensure_column(version)
        schema = self.table.schema
        row_of = {str(i): n for n, i in enumerate(ids)}

        def commit() -> None:  # read and commit against one table version; a retry starts over
            ds = self.dataset()
            found = ds.to_table(columns=["id", "title", "text", "image", "metadata", "model_version"],
                                filter=id_filter(ids), with_row_address=True)
            found = found.filter(pc.not_equal(found.column("model_version"), version.id))
            if not found.num_rows:
                return
            take = np.array([row_of[i] for i in found.column("id").to_pylist()], dtype=np.int64)
            rows = rows_table(schema, col, version.id, found.column("id").to_pylist(), np.asarray(vectors)[take], Payloads.of(found))
            new_fragments = lance.fragment.write_fragments(rows, ds, schema=ds.schema)
            commit_replacement(ds, new_fragments, found.column("_rowaddr").to_numpy().astype(np.int64))

        retry_commit(commit, "backfill batch", self.table.checkout_latest)
        self.table.checkout_latest()
        return self.version

    def delete(self, ids: Sequence[str]) -> int:
        """Delete rows by id in one commit; returns the new table version."""
        self._writer()
        if ids:
            retry_commit(lambda: self.table.delete(id_filter(ids)), "delete", self.table.checkout_latest)
        return self.version

    def compact(self) -> None:
        """Merge small files into larger ones and bring the id index up to date; deletes no
        version (only `index prune` forgets)."""
        self._writer()
        retry_commit(lambda: self.dataset().optimize.compact_files(), "compaction", self.table.checkout_latest)
        self.table.checkout_latest()
        self.ensure_id_index()

    def ensure_id_index(self, lag: int = ID_INDEX_LAG) -> None:
        """A BTREE index on `id`, so id lookups (checks, deletes, backfill merges) do not scan the table.

        Created once the table has rows; rows added later are looked up by a scan of the
        unindexed part only, and join the index once more than `lag` of them wait.
        """
        from lancedb.index import BTree

        self._writer()
        stats = self.table.index_stats(ID_INDEX) if ID_INDEX in {i.name for i in self.table.list_indices()} else None
        if stats is None:
            if self.count():
                retry_commit(lambda: self.table.create_index("id", config=BTree(), name=ID_INDEX), "id index", self.table.checkout_latest)
        elif stats.num_unindexed_rows > max(lag, stats.num_indexed_rows // 10 if lag else 0):
            retry_commit(lambda: self.dataset().optimize.optimize_indices(), "id index update", self.table.checkout_latest)
            self.table.checkout_latest()


    def addresses_of(self, ids: Sequence[str], version: int | None = None) -> dict[str, tuple[int, str]]:
        """id -> (row address, model version) of the rows of `ids` at table `version` (by the id index)."""
        out: dict[str, tuple[int, str]] = {}
        for s in range(0, len(ids), ID_FILTER_MAX):
            t = self.dataset(version).to_table(columns=["id", "model_version"], filter=id_filter(ids[s : s + ID_FILTER_MAX]),
                                               with_row_address=True)
            out.update(zip(t.column("id").to_pylist(), zip(t.column("_rowaddr").to_pylist(), t.column("model_version").to_pylist())))
        return out

    def existing(self, ids: Sequence[str] | np.ndarray) -> list[str]:
        """Which of `ids` the table holds now (read from the table, never from a cache).

        Up to ID_SCAN_FROM ids are looked up through the id index, ID_FILTER_MAX at a time;
        more than that are checked in one streamed pass over the id column.
        """
        if len(ids) < ID_SCAN_FROM:
            ids = [str(i) for i in ids]
            return [i for s in range(0, len(ids), ID_FILTER_MAX) for i in self._rows(ids[s : s + ID_FILTER_MAX], ["id"])]
        wanted = {str(i) for i in ids}
        found: list[str] = []
        for batch in self.dataset().to_batches(columns=["id"]):
            found += [i for i in batch.column("id").to_pylist() if i in wanted]
        return found

    def scan(self, columns: list[str], where: str | None = None, version: int | None = None) -> pa.Table:
        """Some columns of every row (optionally filtered), in table order."""
        return self.dataset(version).to_table(columns=columns, filter=where, scan_in_order=True)

    def rows_by_version(self) -> dict[str, int]:
        """Rows per model version at the latest table version (the column streamed in blocks)."""
        self.latest_version()
        out: dict[str, int] = {}
        for batch in self.dataset().to_batches(columns=["model_version"]):
            for c in batch.column("model_version").value_counts().to_pylist():
                out[str(c["values"])] = out.get(str(c["values"]), 0) + int(c["counts"])
        return dict(sorted(out.items()))

    def vectors_by_id(self) -> dict[str, tuple[str, np.ndarray]]:
        """id -> (model version, stored vector) of every row at the latest version (checks and benchmarks)."""
        out: dict[str, tuple[str, np.ndarray]] = {}
        for v in self.rows_by_version():
            ids, vecs = self.rows_of(v)
            out.update((i, (v, x)) for i, x in zip(ids, vecs))
        return out

    def rows_of(self, version_id: str) -> tuple[list[str], np.ndarray]:
        """Ids and stored vectors of the rows a model version made (training data: from the table)."""
        meta = self.meta
        record = meta.version(version_id)
        t = self.scan(["id", meta.column(record)], where=f"model_version = {sql_quote(version_id)}")
        vec = t.column(meta.column(record)).combine_chunks().values.to_numpy(zero_copy_only=False).reshape(-1, record.dim)
        return [str(i) for i in t.column("id").to_pylist()], np.ascontiguousarray(vec, dtype=np.float32)

    def payloads(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Raw text/title/image of rows, for re-embedding them."""
        return self._rows(ids, ["id", "title", "text", "image", "model_version"])

    def payloads_at(self, labels: np.ndarray, version: int) -> dict[int, dict[str, Any]]:
        """Text, title, image and metadata of rows by row address at table `version`: O(rows asked).

        Only payload columns are read (ids and versions are known to the caller): a random read
        of a string id column costs several times the payload's here.
        """
        if not len(labels):
            return {}
        columns = ["title", "text", "image", "metadata", "_rowaddr"]
        rows = self.dataset(version)._take_rows(np.unique(labels).tolist(), columns=columns).to_pylist()
        for r in rows:
            r["metadata"] = json.loads(r["metadata"]) if r["metadata"] else None
        return {int(r.pop("_rowaddr")): r for r in rows}

    def stored_alike(self, items: Sequence[dict[str, Any]]) -> set[str]:
        """Ids of `items` (dicts with id, title, text, image, metadata) stored already with the same
        content: what a rerun of an interrupted ingest skips. An id stored with other content is
        an error naming it (two different items cannot share an id)."""
        by_id = {str(it["id"]): it for it in items if it.get("id") is not None}
        stored = {i: r for s in range(0, len(by_id), ID_FILTER_MAX)
                  for i, r in self._rows(list(by_id)[s : s + ID_FILTER_MAX], ["id", "title", "text", "image", "metadata"]).items()}
        differ = [i for i, r in stored.items() if _content(r) != _content(by_id[i])]
        if differ:
            raise CompatretError(f"{len(differ)} ids are already in the gallery with other content, e.g. {differ[0]!r}")
        return set(stored)

    def stored_vectors_alike(self, ids: np.ndarray, vectors: np.ndarray, version: ModelVersion, block: int = 100_000) -> np.ndarray:
        """Which of these (id, vector) rows are stored already, by `version`, with the same vector
        (normalised, within 1e-6): what a rerun of an interrupted `add --vectors` skips. An id
        stored otherwise is an error naming it. Read block by block (memory-mapped input)."""
        alike = np.zeros(len(ids), dtype=bool)
        column = self.meta.column(version)
        columns = ["id", "model_version"] + ([column] if column in self.table.schema.names else [])
        for s in range(0, len(ids), block):
            taken = self.existing(ids[s : s + block])
            if not taken:
                continue
            rows = self._rows(taken, columns)
            pos = {str(i): n for n, i in enumerate(ids[s : s + block])}
            for i, row in rows.items():
                mine = normalize(np.asarray(vectors[s + pos[i]], np.float32)[None])[0]
                stored = row.get(column) if row["model_version"] == version.id else None
                if stored is None or not np.allclose(np.asarray(stored, np.float32), mine, atol=1e-6):
                    raise CompatretError(f"ids are already in the gallery with other content, e.g. {i!r}")
                alike[s + pos[i]] = True
        return alike

    def _rows(self, ids: Iterable[str], columns: list[str], version: int | None = None) -> dict[str, dict[str, Any]]:
        unique = set(ids)
        if not unique:
            return {}
        rows = self.scan(columns, where=id_filter(unique), version=version).to_pylist()
        return {r["id"]: r for r in rows}


def _content(row: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two items the same item: their text, title, image bytes and metadata."""
    meta = row.get("metadata")
    if isinstance(meta, str):
        meta = json.loads(meta)
    image = row.get("image")
    return (row.get("title") or None, row.get("text") or None, bytes(image) if image is not None else None, meta or None)


def sql_quote(text: str) -> str:
    """A SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


def id_filter(ids: Iterable[str]) -> str:
    """A SQL filter matching these ids (quotes escaped)."""
    return f"id IN ({', '.join(sql_quote(i) for i in ids)})"
