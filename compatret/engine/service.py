"""Open a gallery, add to it, upgrade its serving model in O(1), and query it with any compatible model."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from compatret.core.contract import CompatPlan, resolve
from compatret.core.errors import CompatretError
from compatret.core.lineage import ModelVersion
from compatret.encoders import Encoder, load_encoder, load_version
from compatret.engine.ingest import add_items, add_vectors, check_query_vectors
from compatret.engine.locks import ReadWriteLock
from compatret.engine.merge import merged_search
from compatret.engine.models import lineage, named_version, source_of
from compatret.engine.results import QueryResult, _public_payload
from compatret.engine.upgrade import upgrade_gallery
from compatret.search.kernels import ANN_KINDS
from compatret.search.view import SearchIndex
from compatret.store.gallery import Gallery
from compatret.store.marks import written_mark
from compatret.store.meta import GalleryMeta

if TYPE_CHECKING:
    from compatret.engine.ray_cluster import RayOptions

READ_RETRIES = 3  # a query whose table version is pruned under it is answered again from the latest one
log = logging.getLogger(__name__)
ENCODER_CACHE = 4  # encoders kept loaded per service (least recently used goes first)


class Service:
    """One gallery plus its search index and the encoders that query it."""

    def __init__(self, gallery: Gallery, kernel: str = "auto", refresh_seconds: float = 0.0) -> None:
        self.gallery = gallery
        self.kernel_name = kernel
        self.refresh_seconds = refresh_seconds
        self._checked = 0.0
        self._mark: tuple[int, int] | None = None  # the gallery's write mark when the view was last brought forward
        self._loader: threading.Thread | None = None
        self._lock = threading.RLock()  # guards which view is current
        self._views = ReadWriteLock()  # queries search a view under read; moving it forward is a write
        self._index: SearchIndex | None = None
        self._encoders: OrderedDict[str, Encoder] = OrderedDict()
        self._bound: dict[str, Encoder] = {}  # model id -> an encoder object of this process (see bind_encoder)
        self._encoder_lock = threading.Lock()
        self.inference = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))  # concurrent query encodings
        self._plans: dict[tuple[ModelVersion, ModelVersion], CompatPlan] = {}

    # ---- lifecycle -------------------------------------------------------------------
    @staticmethod
    def create(
        path: str | Path,
        model: str | None = None,
        dim: int | None = None,
        version_id: str | None = None,
        modality: str | None = None,
        ann: str = "auto",
        merge: str = "raw",
    ) -> Service:
        """A new, empty gallery served by `model` (a spec), or by a bare version for raw vectors."""
        if model is not None:
            version = load_version(model)
            sources = {version.id: source_of(model)}
        elif dim is not None and version_id:
            version = ModelVersion(version_id, dim, modality or "vector", method="external")
            sources = {}
        else:
            raise CompatretError("give --model, or both --dim and --version-id")
        if ann not in ANN_KINDS or merge not in ("raw", "shared"):
            raise CompatretError(f"unknown index kind {ann!r} or merge policy {merge!r}")
        meta = GalleryMeta(
            dim=version.dim,
            vector_model=version,
            serving=version,
            modality=modality or version.modality,
            sources=sources,
            ann=ann,
            merge=merge,
        )
        gallery = Gallery.create(path, meta)
        with gallery.writing("index create"):
            gallery.set_meta(gallery.with_event("create", model=version.id))
        return Service(gallery)

    @staticmethod
    def open(path: str | Path, kernel: str = "auto", refresh_seconds: float = 0.0) -> Service:
        """Open a gallery; refresh_seconds > 0 lets queries use a snapshot up to that old (servers)."""
        return Service(Gallery.open(path), kernel, refresh_seconds)

    @property
    def meta(self) -> GalleryMeta:
        return self.gallery.meta

    @property
    def index(self) -> SearchIndex:
        """The view of the table's latest version. Servers (refresh_seconds > 0) may get one up to
        that old, except after a write through compatret (any process): its mark moved, so the
        view is brought forward before this returns (read-your-writes, one stat per query)."""
        with self._lock:
            now = time.monotonic()
            mark = written_mark(self.gallery.mark_file)
            if self._index is not None and mark == self._mark and now - self._checked < self.refresh_seconds:
                return self._index
            moved, self._checked, self._mark = mark != self._mark, now, mark
            if self._index is None:
                self._index = SearchIndex.load(self.gallery, self.gallery.latest_version())
            elif not self.refresh_seconds or moved:
                self._advance_now()
            elif self._loader is None or not self._loader.is_alive():
                self._loader = threading.Thread(target=self._advance_in_background, args=(self._index,), daemon=True)
                self._loader.start()
            return self._index

    def _advance_now(self) -> None:
        """Move the view to the latest version before answering (caller holds self._lock)."""
        assert self._index is not None
        version = self.gallery.latest_version()
        if version != self._index.table_version:
            fresh = self._index.read_fragments(self.gallery, version)
            with self._views.write():
                self._index = self._index.moved_to(fresh, version)

    def view_at(self, version: int) -> SearchIndex:
        """The view moved to table `version` (forward or back), reading only what differs."""
        with self._lock:
            if self._index is None:
                self._index = SearchIndex.load(self.gallery, version)
            elif self._index.table_version != version:
                fresh = self._index.read_fragments(self.gallery, version)
                with self._views.write():
                    self._index = self._index.moved_to(fresh, version)
            return self._index

    def _advance_in_background(self, current: SearchIndex) -> None:
        """Servers: read the next version's rows on a handle of its own while queries go on, then
        move the kernels under the lock (a pause as long as the change, not the gallery); dropped
        when a read-your-writes advance moved the view meanwhile."""
        gallery = Gallery.open(self.gallery.path)
        if gallery.version == current.table_version:
            return
        fresh = current.read_fragments(gallery, gallery.version)
        with self._lock:
            if self._index is current:
                with self._views.write():
                    self._index = current.moved_to(fresh, gallery.version)

    # ---- models ----------------------------------------------------------------------
    lineage = staticmethod(lineage)

    def _version(self, model: str | None, meta: GalleryMeta | None = None) -> ModelVersion:
        return named_version(model, meta or self.meta)

    def encoder(self, model: str | None = None, meta: GalleryMeta | None = None) -> Encoder:
        """The encoder of `model` (default: the serving model of `meta`, else of the latest version),
        loaded once; the last few used stay loaded."""
        meta = meta or self.meta
        version = self._version(model, meta)
        if version.id in self._bound:
            return self._bound[version.id]
        spec = meta.sources.get(version.id) if model is None or model in self.lineage(meta) else model
        if spec is None:
            raise CompatretError(f"model {version.id!r} has no weights recorded in this gallery: query with --vectors")
        with self._encoder_lock:
            if spec not in self._encoders:
                self._encoders[spec] = load_encoder(spec)
                while len(self._encoders) > ENCODER_CACHE:
                    self._encoders.popitem(last=False)
            self._encoders.move_to_end(spec)
            return self._encoders[spec]

    def bind_encoder(self, encoder: Encoder) -> None:
        """Embed for the model `encoder.version.id` with this object (an application's own model,
        e.g. a LangChain `Embeddings`): a gallery records no weights for an external model, so only
        the process that holds it can embed. Its id must be one of the gallery's models."""
        if encoder.version.id not in self.lineage(self.meta):
            raise CompatretError(f"model {encoder.version.id!r} is not one of this gallery's models")
        self._bound[encoder.version.id] = encoder

    def source_of_serving(self) -> str:
        """What loads the serving model (an alias or a folder): Ray workers load it by this spec."""
        meta = self.meta
        spec = meta.serving_source
        if spec is None:
            raise CompatretError(f"serving model {meta.serving.id!r} has no weights recorded here: nothing can embed rows")
        return spec

    def add_vectors(
        self,
        vectors: np.ndarray,
        ids: Sequence[str] | np.ndarray | None = None,
        model: str | None = None,
        batch_size: int = 100_000,
        progress: bool = False,
        ray: RayOptions | None = None,
    ) -> int:
        """Store precomputed vectors of `model` (default: the gallery's first model): see `engine.ingest.add_vectors`."""
        return add_vectors(self.gallery, vectors, ids, model, batch_size, progress, ray)

    def add_items(
        self, items: Sequence[dict[str, Any]], batch_size: int = 256, progress: bool = True, stop: threading.Event | None = None
    ) -> int:
        """Embed items with the serving model and store them: see `engine.ingest.add_items`."""
        return add_items(self.gallery, self.encoder, items, batch_size, progress, stop)

    def delete(self, ids: Sequence[str]) -> int:
        """Delete rows by id (unknown ids are an error: nothing is deleted then); returns the rows
        removed, so an id given twice counts once."""
        ids = list(dict.fromkeys(str(i) for i in ids))
        with self.gallery.writing("delete"):
            present = set(self.gallery.existing(ids))
            unknown = [i for i in ids if i not in present]
            if unknown:
                raise CompatretError(f"{len(unknown)} ids not in the gallery, e.g. {unknown[0]!r}")
            self.gallery.delete(ids)
        return len(ids)

    def upgrade(self, model: str, gate: dict[str, Any] | None = None) -> GalleryMeta:
        """Make a compatible model the serving model: one metadata commit, nothing re-embedded (see
        `engine.upgrade`); the encoders loaded for the old serving model are let go."""
        new_meta = upgrade_gallery(self.gallery, model, gate)
        with self._encoder_lock:
            self._encoders.clear()
        return new_meta

    # ---- reads -----------------------------------------------------------------------
    def plan(self, model: str | None = None) -> CompatPlan:
        """How `model` (default: serving) compares with the gallery's first model's vectors."""
        meta = self.meta
        return self._plan(self._version(model, meta), meta.vector_model)

    def _plan(self, query: ModelVersion, rows: ModelVersion) -> CompatPlan:
        key = (query, rows)
        if key not in self._plans:
            self._plans[key] = resolve(query, rows, self.gallery.path)
        return self._plans[key]

    def query(
        self,
        texts: Sequence[str] | None = None,
        images: Sequence[Any] | None = None,
        vectors: np.ndarray | None = None,
        model: str | None = None,
        k: int = 10,
        include_payload: bool = False,
        at_version: int | None = None,
    ) -> list[QueryResult]:
        """Top-k for each query, embedded (or given as vectors) in `model`'s space, default serving;
        from table version `at_version` if given (a sharded gallery's snapshot), else the latest.

        Each model version present in the gallery is searched in the space its Compat plan
        gives, and the hits are merged by score: `raw` (default) compares each row in the
        widest space it shares with the query; `shared` compares every row in the space
        shared by all versions present (chosen by the backfill-curve benchmark).
        """
        if sum(x is not None for x in (texts, images, vectors)) != 1:
            raise CompatretError("give exactly one of texts, images or vectors")
        if k < 1:
            raise CompatretError(f"k must be >= 1, got {k}")
        for attempt in range(READ_RETRIES):
            try:
                return self._query(texts, images, vectors, model, k, include_payload, at_version)
            except OSError as exc:  # the view's version was pruned under it (prune, compaction): answer from the next one
                if attempt == READ_RETRIES - 1:
                    raise
                log.info("query: its table version went away (%s); answering from the latest", exc)
                with self._lock:
                    if self._index is not None:
                        self._advance_now()
        raise AssertionError("unreachable")

    def _query(
        self,
        texts: Sequence[str] | None,
        images: Sequence[Any] | None,
        vectors: np.ndarray | None,
        model: str | None,
        k: int,
        include_payload: bool,
        at_version: int | None = None,
    ) -> list[QueryResult]:
        """One query against one view (see query)."""
        encoded: tuple[str, np.ndarray] | None = None
        while True:  # one view for the whole query; again if it moved on before the search began
            index = self.index if at_version is None else self.view_at(at_version)
            meta = self.gallery.meta_at(index.table_version)
            version = self._version(model, meta)
            if vectors is not None:
                q = check_query_vectors(vectors, version)
            elif encoded is None or encoded[0] != version.id:
                encoded = (version.id, self._encode(texts, images, version, model, meta))
                q = encoded[1]
            with self._views.read():
                if index.retired:
                    continue
                scores, labels = merged_search(index, meta, version, q, k, self._plan, self.kernel_name)
                ids, row_versions = index.ids_of(labels)
            break
        hit = labels >= 0
        id_rows, score_rows = ids.tolist(), scores.tolist()
        if not hit.all():  # fewer hits than k: drop the padding
            id_rows = [[i for i in r if i is not None] for r in id_rows]
            score_rows = [r[: len(i)] for r, i in zip(score_rows, id_rows)]
        results = [QueryResult(i, sc, table_version=index.table_version) for i, sc in zip(id_rows, score_rows)]
        if include_payload:  # ids and model versions are in the view; the rest by row address
            fetched = self.gallery.payloads_at(labels[hit], version=index.table_version)
            results = [
                replace(r, payloads=[_public_payload({**fetched[int(lab)], "model_version": v}) for lab, v in zip(lr[h], vr[h])])
                for r, lr, vr, h in zip(results, labels, row_versions, hit)
            ]
        return results

    def embed_queries(
        self,
        texts: Sequence[str] | None = None,
        images: Sequence[Any] | None = None,
        vectors: np.ndarray | None = None,
        model: str | None = None,
        at_version: int | None = None,
    ) -> np.ndarray:
        """Checked query vectors in `model`'s space (default: the serving model of table version
        `at_version`, else of the latest): what a sharded gallery embeds once and sends every shard."""
        if sum(x is not None for x in (texts, images, vectors)) != 1:
            raise CompatretError("give exactly one of texts, images or vectors")
        meta = self.gallery.meta_at(self.gallery.latest_version() if at_version is None else at_version)
        version = self._version(model, meta)
        return check_query_vectors(vectors, version) if vectors is not None else self._encode(texts, images, version, model, meta)

    def _encode(
        self, texts: Sequence[str] | None, images: Sequence[Any] | None, version: ModelVersion, model: str | None, meta: GalleryMeta
    ) -> np.ndarray:
        """Query vectors from texts (a text model) or images (an image model): never one read as the other."""
        wanted = "text" if texts is not None else "image"
        if version.modality != wanted:
            raise CompatretError(f"{wanted} queries need a {wanted} model; {version.id!r} is a {version.modality} model")
        enc = self.encoder(model, meta)  # the model of the view searched, even right after an upgrade
        with self.inference:
            vectors = enc.encode_queries(list(texts if texts is not None else images))  # type: ignore[arg-type]
        return check_query_vectors(vectors, version)

    def existing(self, ids: Sequence[str]) -> list[str]:
        """Which of `ids` the table holds now."""
        return self.gallery.existing(ids)

    def count(self) -> int:
        """Rows in the table's latest version."""
        return self.gallery.count()

    def rows_by_version(self) -> dict[str, int]:
        """How many rows each model version made: the backfill progress, counted in the table."""
        return self.gallery.rows_by_version()

    def rows_by_plan(self, counts: dict[str, int] | None = None) -> dict[str, int]:
        """How the serving model reads the rows (`counts`: rows_by_version, when already read):
        `native` (its own vectors), `same space` (identity rules), `shared dims` (prefix rules:
        the first d dims) or `mapped` (through a transform)."""
        meta = self.meta
        out: dict[str, int] = {}
        for v, n in (counts if counts is not None else self.rows_by_version()).items():
            plan = self._plan(meta.serving, meta.version(v))
            how = (
                "native"
                if v == meta.serving.id
                else "mapped"
                if plan.gallery_transforms
                else "shared dims"
                if plan.dims < meta.serving.dim
                else "same space"
            )
            out[how] = out.get(how, 0) + n
        return out
