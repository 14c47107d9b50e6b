"""The Index: one gallery, single or sharded, behind the methods the CLI, the HTTP server and Python
users call (see `compatret.api`)."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from compatret.api.rows import ROW_COLUMNS, Where, differs, equal_to, not_one_string, replace_rows, row_of, text_items, vectors_in
from compatret.core.errors import CompatretError

if TYPE_CHECKING:
    from compatret.encoders import Encoder
    from compatret.engine.backfill import BackfillReport
    from compatret.engine.ray_cluster import RayOptions
    from compatret.engine.results import QueryResult
    from compatret.engine.service import Service
    from compatret.engine.sharded import ShardedService
    from compatret.store.meta import GalleryMeta


class Index:
    """One gallery: add, get, delete and query rows; upgrade the serving model without re-embedding;
    backfill, roll back, prune; read its history, info and integrity. A sharded gallery behaves
    the same (every change is published as one snapshot)."""

    def __init__(self, engine: Service | ShardedService) -> None:
        self.engine = engine

    # ---- what it is ------------------------------------------------------------------
    @property
    def sharded(self) -> bool:
        return hasattr(self.engine, "shards")

    @property
    def path(self) -> Path:
        return self._sharded.root if self.sharded else self._single.gallery.path

    @property
    def meta(self) -> GalleryMeta:
        return self.engine.meta

    @property
    def serving(self) -> str:
        """The id of the model that embeds queries and new rows."""
        return self.meta.serving.id

    def __len__(self) -> int:
        return self.engine.count()

    @property
    def _single(self) -> Service:
        return self.engine  # type: ignore[return-value]

    @property
    def _sharded(self) -> ShardedService:
        return self.engine  # type: ignore[return-value]

    def _services(self) -> list[tuple[Service, int | None]]:
        """Each gallery to read, at the version a read must use (a sharded gallery's published snapshot)."""
        if not self.sharded:
            return [(self._single, None)]
        return list(zip(self._sharded.shards, self._sharded.snapshot.versions))

    def encoder(self, model: str | None = None) -> Encoder:
        """The encoder of `model` (default: the serving model now), loaded once."""
        return self._services()[0][0].encoder(model)

    def bind_encoder(self, encoder: Encoder) -> None:
        """Let this process embed for an external model (one whose weights the gallery cannot load)."""
        for service, _ in self._services():
            service.bind_encoder(encoder)

    # ---- writes ----------------------------------------------------------------------
    def add(
        self,
        texts: Sequence[str] | None = None,
        *,
        items: Sequence[dict[str, Any]] | None = None,
        vectors: np.ndarray | None = None,
        ids: Sequence[str] | np.ndarray | None = None,
        metadatas: Sequence[dict[str, Any] | None] | None = None,
        model: str | None = None,
        batch_size: int = 256,
        progress: bool = False,
        ray: RayOptions | None = None,
        stop: threading.Event | None = None,
    ) -> int:
        """Store texts (with ids and metadata), item dicts (id, text|title|image, metadata) embedded
        by the serving model, or precomputed `vectors` of `model`; returns the rows added. A rerun
        skips what is stored already with the same content; other content under a stored id is refused.
        `stop` set (Ctrl-C) ends an add of items after the batch in hand."""
        if sum(x is not None for x in (texts, items, vectors)) != 1:
            raise CompatretError("give exactly one of texts, items or vectors")
        if vectors is not None:
            if metadatas is not None or stop is not None:
                raise CompatretError("vectors are stored bare: metadatas and stop go with texts or items")
            return self.engine.add_vectors(vectors, ids=ids, model=model, progress=progress, ray=ray)
        if model is not None or ray is not None:
            raise CompatretError("texts and items are embedded by the serving model, here: model and ray go with vectors")
        if texts is not None:
            items = text_items(texts, ids, metadatas)
        elif ids is not None or metadatas is not None:
            raise CompatretError("items carry their own id and metadata: ids and metadatas go with texts")
        not_one_string(items, "items")
        return self.engine.add_items(list(items or []), batch_size=batch_size, progress=progress, stop=stop)

    def upsert(self, texts: Sequence[str], ids: Sequence[str], metadatas: Sequence[dict[str, Any] | None] | None = None) -> int:
        """Add texts, replacing the rows stored under these ids with other content; rows stored with
        the same content are left alone. Returns the rows written.

        Everything is checked and embedded before the first commit, so bad input or a failing model
        changes nothing. The replacement is a delete and an add under one writer lock: a reader
        between the two commits misses those ids, and a crash between them is undone by
        `rollback` to the version before (a sharded gallery undoes a failed add itself)."""
        items = text_items(texts, ids, metadatas, needs_ids=True)
        stored = {r["id"]: r for r in self.get([it["id"] for it in items])}
        todo = [it for it in items if it["id"] not in stored or differs(stored[it["id"]], it)]
        if not todo:
            return 0
        stale = [it["id"] for it in todo if it["id"] in stored]
        if not self.sharded:
            return replace_rows(self._single, todo, stale)
        before = self._sharded.snapshot.snapshot
        if stale:
            self.delete(stale)
        try:
            return self.add(items=todo)
        except BaseException:
            if stale and self._sharded.log.all()[-1].snapshot == before + 1:  # only our delete since: put it back
                self._sharded.rollback(before)
            raise

    def delete(self, ids: Sequence[str], missing_ok: bool = False) -> int:
        """Delete rows by id; an unknown id is an error that deletes nothing, unless `missing_ok`."""
        not_one_string(ids, "ids")
        ids = list(dict.fromkeys(str(i) for i in ids))
        if missing_ok:
            ids = self.existing(ids)
            if not ids:
                return 0
        return self.engine.delete(ids)

    def upgrade(self, model: str, gate: dict[str, Any] | None = None) -> GalleryMeta:
        """Serve a compatible `model` (an O(1) commit; nothing re-embedded). `gate` is the verdict of
        `engine.gate.gate_check` to record with the upgrade (a failed one refuses it)."""
        return self.engine.upgrade(model, gate)

    def backfill(
        self,
        limit: int | None = None,
        fraction: float | None = None,
        order: str = "auto",
        batch_size: int = 64,
        progress: bool = False,
        ray: RayOptions | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> BackfillReport:
        """Re-embed rows of older models with the serving model (all, `limit` rows, or up to `fraction`);
        queries go on meanwhile; a rerun resumes."""
        if self.sharded:
            return self._sharded.backfill(limit, fraction, order, batch_size, progress, should_stop, ray)
        from compatret.engine.backfill import backfill

        return backfill(self._single, limit, fraction, order, batch_size, progress, ray=ray, should_stop=should_stop)

    def rollback(self, to: int) -> dict[str, Any]:
        """Restore the rows and serving model of table version `to` (a sharded gallery: snapshot `to`) as a new version."""
        if self.sharded:
            snap = self._sharded.rollback(to)
            return {"restored": to, "serving": snap.serving, "table_version": snap.snapshot, "snapshot": snap.snapshot}
        from compatret.store.history import rollback

        gallery = self._single.gallery
        meta = rollback(gallery, to)
        return {"restored": to, "serving": meta.serving.id, "table_version": gallery.version}

    def prune(self, older_than: dt.timedelta = dt.timedelta(days=7)) -> dict[str, Any]:
        """Compact, then forget versions older than `older_than` (the one call that forgets history)."""
        if self.sharded:
            return self._sharded.prune(older_than)
        from compatret.store.history import prune

        return prune(self._single.gallery, older_than)

    def adapt(
        self, model: str, out: str | Path, progress: bool = False, log: Callable[[str], None] | None = None, **settings: Any
    ) -> dict[str, Any]:
        """Fit a map from a model nobody trained for compatibility to this gallery's, write it to
        `out` (a model folder `upgrade` accepts) unless staying is estimated better; see AdaptSettings."""
        from compatret.adapt.build import AdaptSettings
        from compatret.adapt.build import adapt as run

        fitted_on = self.path
        if self.sharded:  # rows land on shards by a hash of the id: the largest shard is a uniform sample
            fitted_on = self._largest_shard()
            if log is not None:
                log(f"a sharded gallery: fitting and estimating on its largest shard, {fitted_on}")
        return run(fitted_on, model, out, AdaptSettings(**settings), progress=progress, log=log)

    def _largest_shard(self) -> Path:
        """The folder of the shard holding the most published rows (a sharded gallery)."""
        from compatret.engine.sharded import shard_dir

        rows = [s.gallery.dataset(v).count_rows() for s, v in self._services()]
        return shard_dir(self._sharded.root, rows.index(max(rows)))

    # ---- reads -----------------------------------------------------------------------
    def query(
        self,
        texts: Sequence[str] | None = None,
        *,
        vectors: np.ndarray | None = None,
        images: Sequence[Any] | None = None,
        k: int = 10,
        model: str | None = None,
        where: Where | None = None,
        include_payload: bool = False,
    ) -> list[QueryResult]:
        """Top-k per query by score, embedded by the serving model (or `model`), or given as vectors.

        `where` keeps rows whose metadata matches (equal values, or a predicate on the metadata
        dict): the search widens until k rows match or every row the kernel returns was seen. On
        an exact kernel (flat, the default below 200,000 rows) filtered answers are exact; on an
        approximate one (ivf, ivfpq, hnsw) they are as approximate as unfiltered ones."""
        if sum(x is not None for x in (texts, images, vectors)) != 1:
            raise CompatretError("give exactly one of texts, images or vectors")
        not_one_string(texts, "texts")
        if k < 1:
            raise CompatretError(f"k must be >= 1, got {k}")
        if where is None:
            return self.engine.query(texts=texts, images=images, vectors=vectors, model=model, k=k, include_payload=include_payload)
        keep = where if callable(where) else equal_to(where)
        q = self._services()[0][0].embed_queries(texts, images, vectors, model)  # embedded once, however far the search widens
        return [self._filtered(q[n : n + 1], keep, k, model, include_payload) for n in range(len(q))]

    def _filtered(self, q: np.ndarray, keep: Callable[[dict[str, Any]], bool], k: int, model: str | None, payload: bool) -> QueryResult:
        from dataclasses import replace

        total, wide = len(self), max(4 * k, 32)
        while True:
            r = self.engine.query(vectors=q, model=model, k=min(wide, max(total, 1)), include_payload=True)[0]
            assert r.payloads is not None
            hits = [n for n, p in enumerate(r.payloads) if keep(p.get("metadata") or {})][:k]
            if len(hits) == k or wide >= total:
                picked = [r.payloads[n] for n in hits] if payload else None
                return replace(r, ids=[r.ids[n] for n in hits], scores=[r.scores[n] for n in hits], payloads=picked)
            wide *= 4

    def get(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        """The stored rows of `ids` that exist (id, title, text, metadata, model_version), in the order given."""
        from compatret.store.rows import ID_FILTER_MAX, id_filter

        not_one_string(ids, "ids")
        found: dict[str, dict[str, Any]] = {}
        wanted = list(dict.fromkeys(str(i) for i in ids))
        for service, version in self._services():
            for s in range(0, len(wanted), ID_FILTER_MAX):
                table = service.gallery.scan(ROW_COLUMNS, where=id_filter(wanted[s : s + ID_FILTER_MAX]), version=version)
                found.update((r["id"], row_of(r)) for r in table.to_pylist())
        return [found[i] for i in wanted if i in found]

    def vectors(self, ids: Sequence[str], model: str | None = None) -> np.ndarray:
        """Rows of `ids` in `model`'s space (default: serving), in the order given: stored vectors of
        that model as they are, rows of other models embedded again from their text or image."""
        return vectors_in(self._services(), self.meta, ids, model, self.encoder)

    def ids_where(self, where: Where) -> list[str]:
        """Ids of the rows whose metadata matches (a scan of the metadata column: O(rows))."""
        import json

        keep = where if callable(where) else equal_to(where)
        out: list[str] = []
        for service, version in self._services():
            for batch in service.gallery.dataset(version).to_batches(columns=["id", "metadata"]):
                out += [
                    i
                    for i, m in zip(batch.column("id").to_pylist(), batch.column("metadata").to_pylist())
                    if keep(json.loads(m) if m else {})
                ]
        return out

    def existing(self, ids: Sequence[str]) -> list[str]:
        """Which of `ids` are stored."""
        return list(self.engine.existing(list(ids)))

    def history(self, every_version: bool = False) -> list[dict[str, Any]]:
        """Table versions (a sharded gallery: snapshots): time, rows, serving model, what changed;
        a backfill's batches as one entry unless `every_version`."""
        if self.sharded:
            return self._sharded.history()
        from compatret.store.history import grouped, history

        rows = history(self._single.gallery)
        return rows if every_version else grouped(rows)

    def info(self) -> dict[str, Any]:
        """Rows, dims, serving model and lineage, kernel, recent history (what `index info` prints)."""
        if self.sharded:
            from compatret.engine.overview import sharded_info

            return sharded_info(self._sharded)
        from compatret.engine.overview import info

        return info(self._single)

    def verify(self, repair: bool = False) -> dict[str, Any]:
        """Compare the search cache with the table (ids, row versions, vector digests, lineage);
        `ok` is false on any mismatch; `repair` rebuilds the cache from the table."""
        from compatret.search.verify import verify

        reports = [verify(service.gallery, repair=repair) for service, _ in self._services()]
        if not self.sharded:
            return reports[0].to_dict()
        return {"ok": all(r.ok for r in reports), "shards": [r.to_dict() for r in reports]}
