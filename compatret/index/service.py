"""Open a gallery, add to it, upgrade its serving model in O(1), and query it with any compatible model."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
from tqdm.auto import tqdm

from compatret.data.items import duplicate_error
from compatret.encoders import ALIASES, Encoder, load_encoder, load_version
from compatret.encoders.registry import check_endpoint
from compatret.errors import CompatretError
from compatret.index.gallery import Gallery, GalleryMeta, written_mark
from compatret.index.search import ANN_KINDS, backend_name, resolve_ann
from compatret.index.search_index import SearchIndex
from compatret.versions import CompatPlan, IncompatibleLineage, ModelVersion, apply_plan, check_same_weights, confined, normalize, resolve

if TYPE_CHECKING:
    from compatret.index.ray_engine import RayOptions

TRANSFORMS_DIR = "transforms"
READ_RETRIES = 3  # a query whose table version is pruned under it is answered again from the latest one
log = logging.getLogger("compatret.service")
ENCODER_CACHE = 4  # encoders kept loaded per service (least recently used goes first)


class ReadWriteLock:
    """Many readers or one writer; a waiting writer holds back new readers, so it is never starved.

    Queries search a view under `read`, in parallel; moving the view forward edits its kernels
    in place, under `write`."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


@dataclass(frozen=True)
class QueryResult:
    """Top-k of one query, best first; payloads only when asked for."""

    ids: list[str]
    scores: list[float]
    payloads: list[dict[str, Any]] | None = None
    table_version: int = -1  # the table version this answer was read from

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ids": self.ids, "scores": self.scores, "table_version": self.table_version}
        if self.payloads is not None:
            out["payloads"] = self.payloads
        return out


class NeedsAdapter(IncompatibleLineage):
    """An upgrade to a model that cannot read the stored rows: the message names the fix,
    `compatret adapt`, with placeholders (an HTTP answer names no server path) or, through
    `for_command`, the user's own gallery and model."""

    def __init__(self, reason: str, gallery: str = "GALLERY", model: str = "MODEL") -> None:
        super().__init__(f"{reason}; a model not trained to be compatible joins through a map fitted on the gallery's rows: "
                         f"compatret adapt {gallery} --model {model} --out ADAPTER_DIR, then index upgrade to ADAPTER_DIR")
        self.reason = reason

    def for_command(self, gallery: str, model: str) -> NeedsAdapter:
        return NeedsAdapter(self.reason, gallery, model)


def _source_of(spec: str) -> str:
    """What to store so the model can be loaded later: an alias, or an absolute folder path."""
    path = Path(spec)
    return str(path.resolve()) if path.exists() else spec


def new_ids(n: int) -> list[str]:
    """Fresh row ids, unique by construction (never reused after a delete)."""
    return [uuid.uuid4().hex for _ in range(n)]


def _read_item_image(item: dict[str, Any]) -> bytes | None:
    if item.get("image") is not None:
        return bytes(item["image"])
    if item.get("image_path") is not None:
        try:
            return Path(item["image_path"]).read_bytes()
        except OSError as exc:
            raise CompatretError(f"cannot read image {item['image_path']}: {exc.strerror}") from exc
    return None


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
        self._encoder_lock = threading.Lock()
        self.inference = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))  # concurrent query encodings
        self._plans: dict[tuple[ModelVersion, ModelVersion], CompatPlan] = {}

    # ---- lifecycle -------------------------------------------------------------------
    @staticmethod
    def create(
        path: str | Path, model: str | None = None, dim: int | None = None, version_id: str | None = None,
        modality: str | None = None, ann: str = "auto", merge: str = "raw",
    ) -> Service:
        """A new, empty gallery served by `model` (a spec), or by a bare version for raw vectors."""
        if model is not None:
            version = load_version(model)
            sources = {version.id: _source_of(model)}
        elif dim is not None and version_id:
            version = ModelVersion(version_id, dim, modality or "vector", method="external")
            sources = {}
        else:
            raise CompatretError("give --model, or both --dim and --version-id")
        if ann not in ANN_KINDS or merge not in ("raw", "shared"):
            raise CompatretError(f"unknown index kind {ann!r} or merge policy {merge!r}")
        meta = GalleryMeta(dim=version.dim, vector_model=version, serving=version, modality=modality or version.modality,
                           sources=sources, ann=ann, merge=merge)
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
    @staticmethod
    def _known(meta: GalleryMeta) -> list[ModelVersion]:
        """Every model version this gallery has recorded: serving, first, and the writers of rows."""
        return [meta.serving, meta.vector_model, *meta.versions.values()]

    @staticmethod
    def lineage(meta: GalleryMeta) -> dict[str, ModelVersion]:
        """id -> version of every model a query may name by id: the recorded ones and their ancestors."""
        return {v.id: v for known in Service._known(meta) for v in known.lineage()}

    def _version(self, model: str | None, meta: GalleryMeta | None = None) -> ModelVersion:
        """The version `model` names: an id of the gallery's lineage, else an alias or a model
        folder, refused when it reuses a known id with other weights."""
        meta = meta or self.meta
        if model is None:
            return meta.serving
        named = self.lineage(meta).get(model)
        if named is not None:
            return named
        version = load_version(model)
        check_same_weights(self._known(meta), version)
        return version

    def encoder(self, model: str | None = None, meta: GalleryMeta | None = None) -> Encoder:
        """The encoder of `model` (default: the serving model of `meta`, else of the latest version),
        loaded once; the last few used stay loaded."""
        meta = meta or self.meta
        version = self._version(model, meta)
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

    def source_of_serving(self) -> str:
        """What loads the serving model (an alias or a folder): Ray workers load it by this spec."""
        meta = self.meta
        spec = meta.serving_source
        if spec is None:
            raise CompatretError(f"serving model {meta.serving.id!r} has no weights recorded here: nothing can embed rows")
        return spec

    def _check_writer(self, vectors: np.ndarray, version: ModelVersion, meta: GalleryMeta, block: int = 100_000) -> None:
        """Rows are stored in their own model's space; the serving model must be able to query them.

        Checked block by block, so a memory-mapped input is never copied whole."""
        resolve(meta.serving, version, self.gallery.path)
        if vectors.ndim != 2 or vectors.shape[1] != version.dim:
            raise CompatretError(f"vectors must have shape (n, {version.dim}), got {vectors.shape}")
        for s in range(0, len(vectors), block):
            if not np.isfinite(vectors[s : s + block]).all():
                raise CompatretError(f"vectors contain NaN or infinity (in rows {s}..{min(len(vectors), s + block) - 1})")

    # ---- writes: each holds the writer lock and reads the table, never the search view ----
    @staticmethod
    def _check_id_values(ids: np.ndarray) -> None:
        if len(np.unique(ids)) != len(ids):
            duplicate_error(ids.tolist(), "row")
        if (np.char.str_len(ids) == 0).any():
            raise CompatretError("ids must be non-empty strings")

    def _check_new_ids(self, ids: Sequence[str] | np.ndarray) -> None:
        arr = np.asarray(ids, dtype=str)
        self._check_id_values(arr)
        taken = self.gallery.existing(arr)
        if taken:
            raise CompatretError(f"{len(taken)} ids already in the gallery, e.g. {taken[0]!r}")

    def add_vectors(self, vectors: np.ndarray, ids: Sequence[str] | np.ndarray | None = None, model: str | None = None,
                    batch_size: int = 100_000, progress: bool = False, ray: RayOptions | None = None) -> int:
        """Store precomputed vectors of `model` (default: the gallery's first model), one commit per
        batch; returns the rows added (rows stored already with the same vector are skipped).

        Streams: the input may be memory-mapped; it is checked in blocks before the first
        commit (all or nothing) and normalised block by block, so memory beyond the input
        stays constant. Rows without ids get `<uuid>-<n>` ids, unique by construction. With
        `ray`, Ray tasks normalise and write the blocks and this process commits them per step.
        """
        if ray is not None:
            from compatret.index.ray_engine import ingest_vectors

            with self.gallery.writing("ray add vectors: checks"):
                version, id_arr, stored = self.vectors_to_add(vectors, ids, model)
            return ingest_vectors(self.gallery, vectors, id_arr, stored, version.id, ray, progress)
        with self.gallery.writing("add vectors"):
            version, ids, stored = self.vectors_to_add(vectors, ids, model, batch_size)
            token = uuid.uuid4().hex
            for s in tqdm(range(0, len(vectors), batch_size), desc="add", unit="batch", disable=not progress or len(vectors) <= batch_size):
                e = min(len(vectors), s + batch_size)
                keep = ~stored[s:e]
                chunk_ids = ids[s:e][keep].tolist() if ids is not None else [f"{token}-{i}" for i in range(s, e)]
                if chunk_ids:
                    self.gallery.add_rows(chunk_ids, normalize(vectors[s:e][keep]), version)
            self.gallery.ensure_id_index()
        return int(len(vectors) - stored.sum())

    def vectors_to_add(self, vectors: np.ndarray, ids: Sequence[str] | np.ndarray | None, model: str | None,
                       block: int = 100_000) -> tuple[ModelVersion, np.ndarray | None, np.ndarray]:
        """Checks of an `add --vectors` (both engines), before any commit: the model whose space
        they are in, the ids as strings, and which rows are stored already with these vectors
        (skipped, so a rerun of an interrupted add finishes it; other content under an id is refused)."""
        meta = self.meta
        version = self._version(model, meta) if model is not None else meta.vector_model
        self._check_writer(vectors, version, meta, block)
        if ids is None:
            return version, None, np.zeros(len(vectors), dtype=bool)
        ids = np.asarray(ids).astype(str)
        if len(ids) != len(vectors):
            raise CompatretError(f"{len(ids)} ids for {len(vectors)} vectors")
        self._check_id_values(ids)
        return version, ids, self.gallery.stored_vectors_alike(ids, vectors, version, block)

    def add_items(self, items: Sequence[dict[str, Any]], batch_size: int = 256, progress: bool = True,
                  stop: threading.Event | None = None) -> int:
        """Embed items with the serving model and store them, one commit per batch; ids default to uuids.

        Resumable: items whose id is stored already with the same content are skipped (a rerun
        after an interruption finishes the job); an id stored with other content is refused.
        Returns the rows added."""
        if not items:
            return 0
        images_all = [_read_item_image(it) for it in items]
        given = [str(it["id"]) if it.get("id") is not None else None for it in items]
        named = [i for i in given if i is not None]
        duplicate_error(given)
        with self.gallery.writing("add items"):
            # under the lock: an identical add that committed while this one waited is found here, as a retry's is
            done = self.gallery.stored_alike([{**it, "id": i, "image": im} for it, i, im in zip(items, given, images_all) if i is not None]) if named else set()
            keep = [n for n, i in enumerate(given) if i is None or i not in done]
            items = [items[n] for n in keep]
            if not items:
                return 0
            given = [given[n] for n in keep]
            defaults = iter(new_ids(sum(i is None for i in given)))
            ids = [i if i is not None else next(defaults) for i in given]
            texts = [it.get("text") for it in items]
            titles = [it.get("title") for it in items]
            images = [images_all[n] for n in keep]
            meta = self.meta
            self._check_new_ids(ids)
            is_image = meta.modality == "image"
            stray = [i for i, im in zip(ids, images) if im is not None] if not is_image else []
            if stray:
                raise CompatretError(f"this gallery holds {meta.modality}: {len(stray)} items carry an image, e.g. id {stray[0]!r}")
            payload = images if is_image else [t or ti or None for t, ti in zip(texts, titles)]
            missing = [i for i, p in zip(ids, payload) if p is None]
            if missing:
                raise CompatretError(f"{len(missing)} items have no {'image' if is_image else 'text'}, e.g. id {missing[0]!r}")
            encoder = self.encoder()
            bar = tqdm(total=len(items), desc="embed+add", unit="item", disable=not progress)
            for s in range(0, len(items), batch_size):
                if stop is not None and stop.is_set():  # Ctrl-C: the batches committed so far are all there is
                    bar.close()
                    return s
                sl = slice(s, s + batch_size)
                batch = [{"title": it.get("title"), "text": it.get("text")} for it in items[sl]] if not is_image else images[sl]
                vecs = embed_with_progress(encoder, batch, bar)
                self._check_writer(vecs, meta.serving, meta)
                vecs = normalize(vecs)
                self.gallery.add_rows(
                    ids[sl], vecs, meta.serving, texts=texts[sl], images=images[sl],
                    metadata=[it.get("metadata") for it in items[sl]], titles=titles[sl],
                )
                bar.set_postfix(committed=s + len(vecs))
            bar.close()
            self.gallery.ensure_id_index()
        return len(items)

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
        """Make a compatible model the serving model: one metadata commit, nothing re-embedded.

        `gate`: the numbers of a passed upgrade gate, recorded in the history; it was measured
        against `gate["serving"]`, so the upgrade is refused if another writer changed the
        serving model since."""
        version = load_version(model)
        check_endpoint(model, "upgrade to it")  # a model behind an endpoint must still be the one registered
        with self.gallery.writing("upgrade"):
            meta = self.meta
            if gate is not None and gate.get("serving") != meta.serving.id:
                raise CompatretError(f"the gate compared against {gate.get('serving')!r}, but the gallery now serves {meta.serving.id!r}: "
                                     "run it again")
            check_same_weights(self._known(meta), version)
            if version.modality != meta.modality and meta.modality != "vector":
                raise CompatretError(f"model {version.id!r} is for {version.modality}, this gallery holds {meta.modality}")
            for writer in (meta.vector_model, *meta.versions.values()):
                try:
                    resolve(version, writer, self.gallery.path)  # refuses a model that cannot read every row
                except IncompatibleLineage as exc:
                    serving = f", serving {meta.serving.id!r}" if meta.serving.id != writer.id else ""
                    raise NeedsAdapter(f"model {version.id!r} cannot read this gallery's rows ({writer.id!r} vectors{serving}): its "
                                       f"lineage {' -> '.join(v.id for v in version.lineage())} does not reach {writer.id!r}") from exc
            model_dir = Path(model)
            names = [str(n.compat.transform_path) for n in version.lineage() if n.compat.kind == "transform"]
            stray = [name for name in names if PurePosixPath(name).parent != PurePosixPath(TRANSFORMS_DIR)]
            if stray:
                raise CompatretError(f"model {version.id!r}: transform files live in {TRANSFORMS_DIR}/, not {stray[0]!r}")
            transforms = [confined(model_dir, name, "transform file") for name in names]
            targets = [confined(self.gallery.path, name, "transform file") for name in names]
            missing = [t for t in transforms if not t.exists()]
            if missing:
                raise CompatretError(f"model {version.id!r} lacks its transform file {missing[0]}")
            if transforms:  # only once the upgrade is known to be valid: a refusal changes nothing
                (self.gallery.path / TRANSFORMS_DIR).mkdir(exist_ok=True)
            for src, target in zip(transforms, targets):
                shutil.copyfile(src, target)
            sources = dict(meta.sources)
            if (model_dir / "encoder.json").exists() or model in ALIASES:
                sources[version.id] = _source_of(model)
            new_meta = replace(self.gallery.with_event("upgrade", model=version.id, previous=meta.serving.id, **({"gate": gate} if gate else {})),
                               serving=version, sources=sources)
            self.gallery.set_meta(new_meta)
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

    def _search_group(self, index: SearchIndex, group: str, plan: CompatPlan, q: np.ndarray, k: int, ann: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, row labels) of one version's rows, in the plan's space."""
        if plan.dims == dim and not plan.gallery_transforms:
            return index.search(group, q, k, self.kernel_name, ann)
        key = f"{plan.dims}:{'|'.join(plan.gallery_transforms)}"
        return index.search(group, q, k, self.kernel_name, ann, key, lambda x: apply_plan(plan, None, x)[1])  # type: ignore[arg-type,return-value]

    def query(
        self,
        texts: Sequence[str] | None = None,
        images: Sequence[Any] | None = None,
        vectors: np.ndarray | None = None,
        model: str | None = None,
        k: int = 10,
        include_payload: bool = False,
    ) -> list[QueryResult]:
        """Top-k for each query, embedded (or given as vectors) in `model`'s space, default serving.

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
                return self._query(texts, images, vectors, model, k, include_payload)
            except OSError as exc:  # the view's version was pruned under it (prune, compaction): answer from the next one
                if attempt == READ_RETRIES - 1:
                    raise
                log.info("query: its table version went away (%s); answering from the latest", exc)
                with self._lock:
                    if self._index is not None:
                        self._advance_now()
        raise AssertionError("unreachable")

    def _query(self, texts: Sequence[str] | None, images: Sequence[Any] | None, vectors: np.ndarray | None,
               model: str | None, k: int, include_payload: bool) -> list[QueryResult]:
        """One query against one view (see query)."""
        encoded: tuple[str, np.ndarray] | None = None
        while True:  # one view for the whole query; again if it moved on before the search began
            index = self.index
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
                scores, labels = self._search(index, meta, version, q, k)
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
            results = [replace(r, payloads=[_public_payload({**fetched[int(lab)], "model_version": v}) for lab, v in zip(lr[h], vr[h])])
                       for r, lr, vr, h in zip(results, labels, row_versions, hit)]
        return results

    def _encode(self, texts: Sequence[str] | None, images: Sequence[Any] | None, version: ModelVersion,
                model: str | None, meta: GalleryMeta) -> np.ndarray:
        """Query vectors from texts (a text model) or images (an image model): never one read as the other."""
        wanted = "text" if texts is not None else "image"
        if version.modality != wanted:
            raise CompatretError(f"{wanted} queries need a {wanted} model; {version.id!r} is a {version.modality} model")
        enc = self.encoder(model, meta)  # the model of the view searched, even right after an upgrade
        with self.inference:
            vectors = enc.encode_queries(list(texts if texts is not None else images))  # type: ignore[arg-type]
        return check_query_vectors(vectors, version)

    def _search(self, index: SearchIndex, meta: GalleryMeta, version: ModelVersion, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Search each version's rows in its plan's space and merge: (scores, labels), -1 labels pad."""
        plans = {g: self._plan(version, meta.version(g)) for g in index.versions()}
        if not plans:
            return np.zeros((len(vectors), 0), np.float32), np.zeros((len(vectors), 0), np.int64)
        if meta.merge == "shared" and len(plans) > 1:
            shared = min(p.dims for p in plans.values())
            plans = {g: replace(p, dims=shared) for g, p in plans.items()}
        ann = resolve_ann(meta.ann, index.size)
        parts = []
        for g, plan in plans.items():
            q, _ = apply_plan(plan, vectors, None)
            parts.append(self._search_group(index, g, plan, q, k, ann, meta.version(g).dim))  # type: ignore[arg-type]
        if len(parts) == 1:
            return parts[0]
        all_scores = np.concatenate([p[0] for p in parts], axis=1)
        all_labels = np.concatenate([p[1] for p in parts], axis=1)
        all_scores = np.where(all_labels < 0, -np.inf, all_scores)
        top = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(all_scores, top, 1), np.take_along_axis(all_labels, top, 1)

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
            how = ("native" if v == meta.serving.id else "mapped" if plan.gallery_transforms
                   else "shared dims" if plan.dims < meta.serving.dim else "same space")
            out[how] = out.get(how, 0) + n
        return out

    def info(self) -> dict[str, Any]:
        from compatret.index.backfill import pending_rows

        bare = pending_rows(self).unembeddable
        meta = self.meta
        plan = self.plan()
        counts = self.rows_by_version()
        return {
            "path": str(self.gallery.path),
            "rows": self.gallery.count(),
            "rows_by_version": counts,
            "ann": meta.ann,
            "merge": meta.merge,
            "dim": meta.dim,
            "metric": meta.metric,
            "modality": meta.modality,
            "vector_model": meta.vector_model.id,
            "serving_model": meta.serving.id,
            "lineage": [
                {"id": v.id, "dim": v.dim, "method": v.method, "compat": v.compat.to_dict(), "rule": str(v.compat)}
                for v in meta.serving.lineage()
            ],
            "query_plan": {"dims": plan.dims, "transforms": len(plan.gallery_transforms)},
            "rows_by_plan": self.rows_by_plan(counts),
            "groups": [{"model": v, "rows": n, "dim": meta.version(v).dim, "plan_dims": p.dims, "plan_transforms": len(p.gallery_transforms)}
                       for v, n in counts.items() for p in [self._plan(meta.serving, meta.version(v))]],
            "table_version": self.gallery.version,
            "unembeddable": len(bare),
            "unembeddable_examples": bare[:5],
            "kernel": backend_name(self.kernel_name),
            "history": list(meta.history),
        }


ENCODE_BATCH = 32  # items per encoder call while adding: the progress bar moves this often


def embed_with_progress(encoder: Encoder, batch: Sequence[Any], bar: Any) -> np.ndarray:
    """encode_items in slices of ENCODE_BATCH, moving the bar after each (long abstracts take seconds per slice)."""
    parts = []
    for j in range(0, len(batch), ENCODE_BATCH):
        parts.append(np.asarray(encoder.encode_items(list(batch[j : j + ENCODE_BATCH]), batch_size=ENCODE_BATCH)))
        bar.update(len(parts[-1]))
    return np.concatenate(parts)


def check_query_vectors(vectors: Any, version: ModelVersion) -> np.ndarray:
    """Query vectors as float32 [n, dim]: finite and non-zero, else one error naming the row."""
    q = np.asarray(vectors, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != version.dim or not len(q):
        raise CompatretError(f"query vectors must have shape (n, {version.dim}) for model {version.id!r}, got {q.shape}")
    bad = np.flatnonzero(~np.isfinite(q).all(axis=1))
    if len(bad):
        raise CompatretError(f"query vector {int(bad[0])} contains NaN or infinity")
    zero = np.flatnonzero(~q.any(axis=1))
    if len(zero):
        raise CompatretError(f"query vector {int(zero[0])} is all zeros: it has no direction to rank by")
    return q


def _public_payload(row: dict[str, Any]) -> dict[str, Any]:
    """Payload without raw image bytes (JSON-safe): title, text, metadata, model version, image size."""
    out = {k: row[k] for k in ("title", "text", "metadata", "model_version") if row.get(k) is not None}
    if row.get("image") is not None:
        out["image_bytes"] = len(row["image"])
    return out

