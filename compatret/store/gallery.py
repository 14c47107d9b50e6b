"""A gallery: one LanceDB table on local disk whose schema carries the model lineage."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cachetools import LRUCache

from compatret.core.errors import CompatretError
from compatret.core.lineage import ModelVersion
from compatret.core.transforms import normalize
from compatret.store.marks import WRITTEN_MARK, announce_write
from compatret.store.meta import META_KEY, GalleryMeta, _schema, meta_of_schema
from compatret.store.rows import ID_FILTER_MAX, Payloads, _content, commit_replacement, id_filter, rows_table, sql_quote
from compatret.store.sealed import no_space
from compatret.store.writer_lock import retry_commit, writer_lock

os.environ.setdefault("LANCEDB_LOG", "error")
log = logging.getLogger(__name__)

TABLE = "gallery"
ID_SCAN_FROM = 100_000  # ids checked at once: from here one pass over the id column is cheaper than lookups
ID_INDEX = "id_idx"
ID_INDEX_LAG = 100_000  # unindexed rows tolerated (a lookup scans them) before the id index is updated


def _connect(path: Path) -> Any:
    import lancedb

    return lancedb.connect(str(path))


class Gallery:
    """The durable half of an index, and its only truth: rows in LanceDB, each write one commit.

    Writes go through `writing()`, which holds the gallery's writer lock and first moves
    this handle to the latest version, so a write never builds on a stale view.
    """

    def __init__(self, path: Path, table: Any) -> None:
        self.path = path
        self.table = table
        self._metas: LRUCache[int, GalleryMeta] = LRUCache(maxsize=16)  # parsed metadata by table version
        self._datasets: LRUCache[int, Any] = LRUCache(maxsize=5)  # open Lance datasets by table version
        self._cached = threading.Lock()  # guards both caches (queries read them from many threads)
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
        with self._cached:
            ds = self._datasets.get(version)
        if ds is None:
            ds = lance.dataset(str(self.path / f"{TABLE}.lance"), version=version, session=self._session)
            with self._cached:
                self._session = ds.session()
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
        with self._cached:
            meta = self._metas.get(version)
        if meta is None:
            meta = meta_of_schema(self.dataset(version).schema, self.path)
            with self._cached:
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

        entry = {"event": event, "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **details}
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
        the same, but its join grows with the table.) Returns how many rows it wrote: the rows
        given, less those deleted or written by `version` meanwhile.
        """
        import lance

        self._writer()
        if not len(ids):
            return 0
        col = self.ensure_column(version)
        schema = self.table.schema
        row_of = {str(i): n for n, i in enumerate(ids)}

        def commit() -> int:  # read and commit against one table version; a retry starts over
            ds = self.dataset()
            found = ds.to_table(
                columns=["id", "title", "text", "image", "metadata", "model_version"], filter=id_filter(ids), with_row_address=True
            )
            found = found.filter(pc.not_equal(found.column("model_version"), version.id))
            if not found.num_rows:
                return 0
            take = np.array([row_of[i] for i in found.column("id").to_pylist()], dtype=np.int64)
            rows = rows_table(schema, col, version.id, found.column("id").to_pylist(), np.asarray(vectors)[take], Payloads.of(found))
            new_fragments = lance.fragment.write_fragments(rows, ds, schema=ds.schema)
            commit_replacement(ds, new_fragments, found.column("_rowaddr").to_numpy().astype(np.int64))
            return int(found.num_rows)

        written = retry_commit(commit, "backfill batch", self.table.checkout_latest)
        self.table.checkout_latest()
        return written

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
            t = self.dataset(version).to_table(
                columns=["id", "model_version"], filter=id_filter(ids[s : s + ID_FILTER_MAX]), with_row_address=True
            )
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
        stored = {
            i: r
            for s in range(0, len(by_id), ID_FILTER_MAX)
            for i, r in self._rows(list(by_id)[s : s + ID_FILTER_MAX], ["id", "title", "text", "image", "metadata"]).items()
        }
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
