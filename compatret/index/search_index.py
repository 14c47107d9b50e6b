"""The search side of a gallery: a derived view of the table, brought forward from the table itself.

The LanceDB table is the only truth. A Lance table is a list of fragments; a fragment's data
files never change (an update deletes rows and writes new ones elsewhere), only its deletion
file grows. So the view is kept per fragment, keyed by the fragment's data file names:

- a fragment whose files and deletion file are unchanged is reused as it is;
- a fragment with a new deletion file keeps the rows still alive (read from the table's row
  addresses, no data read);
- a new fragment is read from the table (or from its cache folder `search/frag-*/`, which
  names the data files it was read from and so can never describe other rows).

Kernels are labelled by Lance row address (fragment id << 32 | offset) and follow the view
in place: rows of vanished fragments and deleted rows are removed, rows of new fragments
added, so a write of n rows costs O(n) search work. IVF/HNSW kernels are persisted under
`search/kernel-*/` with the fragments they cover and are retrained only when their group has
grown four-fold. Each view is exactly one table version (`table_version`); a missing or
damaged cache file costs time, never data: every cache folder is sealed with digests and
checked when loaded (`sealed`), and read into memory, so a file changed later cannot reach
a running view.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import threading
import uuid
import zipfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from compatret.index.gallery import Gallery, GalleryMeta
from compatret.index.search import IVF_KINDS, Kernel, build_kernel, candidates_for, rerank
from compatret.index.sealed import Damaged, no_space, npy_bytes, npy_from, npz_bytes, read_sealed, write_sealed

CACHE_DIR = "search"
FORMAT = 4  # 4: folders sealed with digests (older folders are read again from the table)
RETRAIN_GROWTH = 4.0  # an IVF kernel is retrained once its group holds this many times its training rows
SAVE_DIRTY = 0.1  # a persisted ANN kernel is rewritten once this fraction of its rows changed
Mapper = Callable[[np.ndarray], np.ndarray]
log = logging.getLogger("compatret.cache")


@dataclass(frozen=True)
class RowsRead:
    """One fragment's rows as read from the table: never changed afterwards."""

    offsets: np.ndarray  # int64 physical row offsets in the fragment, ascending
    ids: np.ndarray  # str array
    versions: np.ndarray  # str array: the model version of each row
    vectors: dict[str, np.ndarray]  # version -> float32 [rows of that version, dim], in offset order

    @cached_property
    def masks(self) -> dict[str, np.ndarray]:
        """Which rows each model version wrote: compared once per fragment, not per write."""
        return {v: self.versions == v for v in self.vectors}

    @cached_property
    def slots(self) -> np.ndarray:
        """Each read row's position in its version's vector array (to fetch vectors by row address)."""
        slots = np.zeros(len(self.offsets), np.int64)
        for mask in self.masks.values():
            slots[mask] = np.arange(int(np.count_nonzero(mask)))
        return slots


@dataclass
class FragmentRows:
    """The live rows of one Lance fragment: the rows read, and which of them are still alive.

    A deletion only changes `alive` (no vector or id is copied), so following a delete or a
    backfill batch costs boolean masks over the touched fragments.
    """

    key: str  # fragment id + digest of its data file names
    fid: int
    deletion: str | None  # the deletion file these rows reflect
    read: RowsRead
    alive: np.ndarray | None = None  # over read rows; None: all alive

    def _live(self, arr: np.ndarray) -> np.ndarray:
        return arr if self.alive is None else arr[self.alive]

    def _mine(self, version: str) -> np.ndarray:
        """Over read rows: alive and written by `version`."""
        mask = self.read.masks.get(version)
        if mask is None:
            return np.zeros(len(self.read.offsets), bool)
        return mask if self.alive is None else mask & self.alive

    @property
    def offsets(self) -> np.ndarray:
        return self._live(self.read.offsets)

    @property
    def ids(self) -> np.ndarray:
        return self._live(self.read.ids)

    @property
    def versions(self) -> np.ndarray:
        return self._live(self.read.versions)

    @cached_property
    def counts(self) -> dict[str, int]:
        """Live rows per model version."""
        if self.alive is None:
            return {v: len(x) for v, x in self.read.vectors.items()}
        counts = {v: int(np.count_nonzero(self._mine(v))) for v in self.read.vectors}
        return {v: n for v, n in counts.items() if n}

    def ids_of(self, version: str) -> np.ndarray:
        return self.read.ids[self._mine(version)]

    def vectors(self, version: str) -> np.ndarray:
        """Live vectors of one version, in offset order (a copy only when rows were deleted)."""
        vec = self.read.vectors[version]
        return vec if self.alive is None else np.asarray(vec)[self.alive[self.read.masks[version]]]

    def labels(self, version: str) -> np.ndarray:
        """Row addresses of the live rows of one version: the labels kernels use."""
        return (np.int64(self.fid) << np.int64(32)) | self.read.offsets[self._mine(version)]

    def find(self, offsets: np.ndarray) -> np.ndarray:
        """Positions among the read rows of live `offsets`; raises when one is not a live row here."""
        pos = np.minimum(np.searchsorted(self.read.offsets, offsets), len(self.read.offsets) - 1)
        ok = self.read.offsets[pos] == offsets
        if self.alive is not None:
            ok &= self.alive[pos]
        if not ok.all():
            raise RuntimeError(f"search kernel holds rows that fragment {self.key} does not (stale kernel)")
        return pos

    def changes_since(self, since: FragmentRows, version: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Against `since` (the same rows read, another deletion state): labels of `version` rows
        that died, and labels and vectors of rows that came back (a rollback restores them)."""
        n = len(self.read.offsets)
        before = np.ones(n, bool) if since.alive is None else since.alive
        now = np.ones(n, bool) if self.alive is None else self.alive
        mine = self.read.masks.get(version, np.zeros(n, bool))
        base = np.int64(self.fid) << np.int64(32)
        back = (now & ~before)[mine]
        return base | self.read.offsets[before & ~now & mine], base | self.read.offsets[mine][back], np.asarray(self.read.vectors[version])[back]

    def keep(self, live: np.ndarray, deletion: str | None) -> FragmentRows | None:
        """These rows restricted to the `live` offsets; None when some live row was never read."""
        pos = np.searchsorted(self.read.offsets, live)
        if len(live) and (pos[-1] >= len(self.read.offsets) or not np.array_equal(self.read.offsets[pos], live)):
            return None
        alive = np.zeros(len(self.read.offsets), dtype=bool)
        alive[pos] = True
        return self._alive_as(alive, deletion)

    def without(self, deleted: np.ndarray, live_rows: int, deletion: str | None) -> FragmentRows | None:
        """These rows minus the `deleted` offsets (from the fragment's deletion file: O(deletions));
        None when the fragment holds rows that were never read (a restore brought them back)."""
        pos = np.searchsorted(self.read.offsets, deleted)
        hit = pos < len(self.read.offsets)
        hit[hit] = self.read.offsets[pos[hit]] == deleted[hit]
        alive = np.ones(len(self.read.offsets), dtype=bool)
        alive[pos[hit]] = False
        if int(alive.sum()) != live_rows:
            return None
        return self._alive_as(alive, deletion)

    def _alive_as(self, alive: np.ndarray, deletion: str | None) -> FragmentRows:
        """The same rows read, with these alive (None when all are)."""
        return FragmentRows(self.key, self.fid, deletion, self.read, None if alive.all() else alive)


def fragment_key(fragment: Any) -> str:
    files = "|".join(f.path for f in fragment.metadata.files)
    return f"{fragment.fragment_id}-{hashlib.blake2b(files.encode(), digest_size=8).hexdigest()}"


def deletion_of(fragment: Any) -> str | None:
    d = fragment.metadata.deletion_file
    return None if d is None else f"{d.id}@{d.read_version}"


def read_fragment(fragment: Any, meta: GalleryMeta, key: str, deletion: str | None) -> FragmentRows:
    """Read one fragment's live rows: id, model version and the vector column of each row's model."""
    names = set(fragment.schema.names)
    cols = ["id", "model_version", *sorted(c for c in names if c.startswith("vector"))]
    t = fragment.to_table(columns=cols, with_row_address=True)
    offsets = (t.column("_rowaddr").to_numpy() & 0xFFFFFFFF).astype(np.int64)
    order = np.argsort(offsets, kind="stable")
    t = t.take(order)
    versions = t.column("model_version").to_numpy(zero_copy_only=False).astype(str)
    vectors: dict[str, np.ndarray] = {}
    for v in np.unique(versions):
        record = meta.version(str(v))
        col = t.column(meta.column(record)).filter(versions == v).combine_chunks()
        vectors[str(v)] = np.ascontiguousarray(col.values.to_numpy(zero_copy_only=False).reshape(-1, record.dim), dtype=np.float32)
    ids = t.column("id").to_numpy(zero_copy_only=False).astype(str)
    return FragmentRows(key, int(fragment.fragment_id), deletion, RowsRead(offsets[order], ids, versions, vectors))


def live_offsets(fragment: Any) -> np.ndarray:
    """Offsets of the rows a fragment still holds: row addresses only, no column data read."""
    t = fragment.to_table(columns=[], with_row_address=True)
    return np.sort((t.column("_rowaddr").to_numpy() & 0xFFFFFFFF).astype(np.int64))


def deleted_offsets(fragment: Any, table_dir: Path) -> np.ndarray | None:
    """The offsets a fragment's deletion file lists, read directly: O(deletions), not O(rows).

    Lance writes small deletion sets as an Arrow IPC file of uint32 offsets (its format spec);
    larger ones as a Roaring bitmap, for which this returns None (the caller scans row addresses).
    """
    import pyarrow.ipc as ipc

    rel = fragment.deletion_file()
    if rel is None:
        return np.zeros(0, np.int64)
    if not str(rel).endswith(".arrow"):
        return None
    try:
        with ipc.open_file(str(table_dir / rel)) as f:
            return np.sort(f.read_all().column(0).to_numpy().astype(np.int64))
    except (OSError, ValueError):
        return None


def follow_deletions(rows: FragmentRows, fragment: Any, table_dir: Path, deletion: str | None) -> FragmentRows | None:
    """The rows of a fragment whose deletion file changed: from the deletion file when it can be read, else from row addresses."""
    deleted = deleted_offsets(fragment, table_dir)
    if deleted is not None:
        return rows.without(deleted, int(fragment.count_rows()), deletion)
    return rows.keep(live_offsets(fragment), deletion)


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished folder into place; a reader meanwhile finds it or falls back to the table.

    Two processes may save the same fragment at once: whichever loses keeps nothing (the
    folders are equal), and neither fails.
    """
    if target.exists():
        trash = target.with_name(f".old-{uuid.uuid4().hex}-{target.name}")
        try:
            os.rename(target, trash)
        except FileNotFoundError:
            pass
        shutil.rmtree(trash, ignore_errors=True)
    try:
        os.rename(tmp, target)
    except OSError:  # another process put an equal copy there first
        shutil.rmtree(tmp, ignore_errors=True)


class FragmentCache:
    """One sealed folder per fragment under `search/`: row metadata in rows.npz, vectors as .npy.

    Files are checked when loaded (see `sealed`): a damaged folder is logged and read again
    from the table, and its rewrite replaces it. A cache that cannot be written (a full or
    read-only disk) costs speed only: the rows stay in memory and the failure is recorded for
    /health (`problem`)."""

    def __init__(self, gallery_dir: Path) -> None:
        self.dir = gallery_dir / CACHE_DIR

    def file(self, key: str) -> Path:
        return self.dir / f"frag-{key}"

    def read(self, key: str) -> FragmentRows:
        """The cached rows of a fragment; raises Damaged when the folder is missing or fails its check."""
        d = self.file(key)
        try:
            with np.load(io.BytesIO(read_sealed(d, "rows.npz").tobytes()), allow_pickle=False) as z:
                if int(z["format"]) != FORMAT or str(z["key"]) != key:
                    raise Damaged(f"{d.name} is of another format or fragment")
                names = [str(v) for v in z["vector_versions"]]
                fid, deletion = int(z["fid"]), str(z["deletion"]) or None
                offsets, ids, versions = z["offsets"], z["ids"], z["versions"]
            vectors = {v: npy_from(read_sealed(d, f"vec-{i}.npy")) for i, v in enumerate(names)}
        except (ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
            raise Damaged(f"{d.name}: {exc}") from exc
        if any(len(x) != int((versions == v).sum()) for v, x in vectors.items()):
            raise Damaged(f"{d.name}: vector counts differ from its rows")
        return FragmentRows(key, fid, deletion, RowsRead(offsets, ids, versions, vectors))

    def load(self, key: str) -> FragmentRows | None:
        """The cached rows, or None (missing, or damaged: logged, and read from the table instead)."""
        if not self.file(key).exists():
            return None
        try:
            return self.read(key)
        except Damaged as exc:
            log.warning("search cache: discarding %s (%s); reading the fragment from the table", self.file(key), exc)
            return None

    def save(self, rows: FragmentRows, table_version: int) -> None:
        """Write the rows as read (a fragment read fresh from the table has no dead rows). Best
        effort: on failure nothing half-written stays, and the reason is kept for /health."""
        target = self.file(rows.key)
        tmp = target.with_name(f".tmp-{uuid.uuid4().hex}-{target.name}")
        read = rows.read
        try:
            tmp.mkdir(parents=True)
            files = {"rows.npz": npz_bytes(format=np.int64(FORMAT), key=np.str_(rows.key), fid=np.int64(rows.fid),
                                           deletion=np.str_(rows.deletion or ""), read_at_version=np.int64(table_version),
                                           offsets=read.offsets, ids=read.ids, versions=read.versions,
                                           vector_versions=np.array(list(read.vectors), dtype=str))}
            files.update({f"vec-{i}.npy": npy_bytes(np.asarray(vec)) for i, vec in enumerate(read.vectors.values())})
            write_sealed(tmp, files)
            _replace_dir(tmp, target)
        except OSError as exc:
            _write_failed(self.dir.parent, tmp, exc)
            return
        note_problem(self.dir.parent, None)

    def drop(self, keys: set[str]) -> None:
        """Forget fragments the table no longer has (a reader still at an older version re-reads them)."""
        for key in keys:
            shutil.rmtree(self.file(key), ignore_errors=True)

    def clear(self) -> None:
        """Remove the whole cache (verify --repair rebuilds it from the table)."""
        shutil.rmtree(self.dir, ignore_errors=True)


_PROBLEMS: dict[Path, str] = {}  # gallery folder -> why its cache cannot be written now (this process)


def note_problem(gallery_dir: Path, problem: str | None) -> None:
    """Record (or clear, with None) a cache write failure; logged once per new reason."""
    if problem is None:
        _PROBLEMS.pop(gallery_dir, None)
    elif _PROBLEMS.get(gallery_dir) != problem:
        _PROBLEMS[gallery_dir] = problem
        log.warning("%s: %s", gallery_dir, problem)


def cache_problem(gallery_dir: Path) -> str | None:
    """Why this process could not write the gallery's search cache last time it tried (None: it could)."""
    return _PROBLEMS.get(gallery_dir)


def _write_failed(gallery_dir: Path, tmp: Path, exc: OSError) -> None:
    """A cache folder that could not be written: nothing half-written stays, the reason is kept for /health."""
    shutil.rmtree(tmp, ignore_errors=True)
    reason = "no space left on device" if no_space(exc) else (exc.strerror or str(exc))
    note_problem(gallery_dir, f"cannot write the search cache ({reason}): serving from memory")


@dataclass
class KernelState:
    """A kernel and the fragments (with their deletion state) whose rows it holds."""

    kernel: Kernel
    covers: dict[str, str | None]
    fids: dict[str, int] = field(default_factory=dict)  # fragment key -> fragment id (label range)
    mapper: Mapper | None = None  # how stored vectors enter this kernel's space (None: as stored)
    dirty: int = 0  # rows added or removed since it was built or saved


def _kernel_dir(gallery_dir: Path, key: tuple[str, ...]) -> Path:
    return gallery_dir / CACHE_DIR / f"kernel-{hashlib.blake2b('|'.join(key).encode(), digest_size=8).hexdigest()}"


def _save_kernel(gallery_dir: Path, key: tuple[str, ...], state: KernelState) -> None:
    """The index and the fragments it covers, in one sealed folder renamed into place. state.json
    names its index file by a fresh token, so a reader never pairs one save's state with another's
    index. Best effort: a kernel that cannot be saved is rebuilt by the next process that needs it."""
    import faiss

    target = _kernel_dir(gallery_dir, key)
    token = uuid.uuid4().hex
    tmp = target.with_name(f".tmp-{token}-{target.name}")
    try:
        tmp.mkdir(parents=True)
        index_bytes = faiss.serialize_index(state.kernel.index).tobytes()  # type: ignore[attr-defined]
        write_sealed(tmp, {f"index-{token}.faiss": index_bytes,
                           "state.json": json.dumps({"key": list(key), "index": f"index-{token}.faiss", "covers": state.covers,
                                                     "fids": state.fids, "trained_on": state.kernel.trained_on,  # type: ignore[attr-defined]
                                                     "rerank": state.kernel.rerank}).encode()})  # type: ignore[attr-defined]
        _replace_dir(tmp, target)
        state.dirty = 0
    except OSError as exc:
        _write_failed(gallery_dir, tmp, exc)


def kernel_files(d: Path) -> tuple[dict[str, Any], np.ndarray]:
    """A saved kernel folder's state and index bytes, each checked against the seal (raises
    Damaged, or ValueError/KeyError for a state that does not parse)."""
    state = json.loads(bytes(read_sealed(d, "state.json")))
    return state, read_sealed(d, state["index"])


def _load_kernel(gallery_dir: Path, key: tuple[str, ...]) -> KernelState | None:
    """A saved kernel, checked against its seal; None when missing or damaged (logged: it is rebuilt)."""
    import faiss

    from compatret.index.search import FaissKernel, faiss_gpus, on_gpu

    d = _kernel_dir(gallery_dir, key)
    if not d.exists():
        return None
    try:
        state, index_bytes = kernel_files(d)
        if state["key"] != list(key):
            return None
        index = faiss.deserialize_index(index_bytes)
    except (Damaged, ValueError, KeyError, RuntimeError) as exc:
        log.warning("search cache: discarding kernel %s (%s); rebuilding it from the rows", d, exc)
        return None
    kernel = FaissKernel(index, on_gpu(key[1], key[2]) and faiss_gpus() > 0, int(state["trained_on"]), int(state.get("rerank", 0)))
    return KernelState(kernel, dict(state["covers"]), {k: int(v) for k, v in state["fids"].items()})


class SearchIndex:
    """The rows of one table version, per fragment, plus kernels kept in step with them."""

    def __init__(self, fragments: dict[str, FragmentRows], table_version: int, gallery_dir: Path | None = None) -> None:
        self.fragments = fragments
        self.table_version = table_version
        self.gallery_dir = gallery_dir
        self._by_fid = {f.fid: f for f in fragments.values()}
        self._kernels: dict[tuple[str, ...], KernelState] = {}
        self._building = threading.Lock()  # concurrent queries build a missing kernel once
        self.retired = False  # set once a newer view took the kernels: searching this one is wrong

    @staticmethod
    def load(gallery: Gallery, version: int | None = None) -> SearchIndex:
        """The view of table `version` (default: the gallery handle's), from cache files or the table."""
        return SearchIndex({}, -1, gallery.path).advanced(gallery, gallery.version if version is None else version)

    def advanced(self, gallery: Gallery, version: int) -> SearchIndex:
        """The view of table `version`, reading only what changed since this one (see moved_to)."""
        if version == self.table_version:
            return self
        return self.moved_to(self.read_fragments(gallery, version), version)

    def read_fragments(self, gallery: Gallery, version: int) -> dict[str, FragmentRows]:
        """The rows of every fragment of table `version`: reused, trimmed, loaded or read (I/O only)."""
        ds = gallery.dataset(version)
        table_dir = Path(ds.uri)
        meta = gallery.meta_at(version)
        cache = FragmentCache(gallery.path)
        fresh: dict[str, FragmentRows] = {}
        for fragment in ds.get_fragments():
            key, deletion = fragment_key(fragment), deletion_of(fragment)
            rows = self.fragments.get(key) or cache.load(key)
            if rows is not None and rows.deletion != deletion:
                rows = follow_deletions(rows, fragment, table_dir, deletion)
            if rows is None:
                rows = read_fragment(fragment, meta, key, deletion)
                cache.save(rows, version)
            rows.counts  # noqa: B018  derived here, not under the query lock
            fresh[key] = rows
        cache.drop(set(self.fragments) - set(fresh))
        return fresh

    def moved_to(self, fresh: dict[str, FragmentRows], version: int) -> SearchIndex:
        """A view of `fresh`, taking this view's kernels along (each updated in place by the rows
        that changed): this older view must not be searched afterwards (Service swaps views
        under its lock)."""
        out = SearchIndex(fresh, version, self.gallery_dir)
        for key, state in list(self._kernels.items()):
            try:
                if out._sync(key, state, self.fragments):
                    out._kernels[key] = state
            except (RuntimeError, MemoryError):  # faiss failed half-way: rebuild this kernel when next asked
                self._kernels.pop(key, None)
        self.retired = True
        return out

    # ---- rows ----------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return sum(sum(f.counts.values()) for f in self.fragments.values())

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.fragments.values():
            for v, n in f.counts.items():
                out[v] = out.get(v, 0) + n
        return dict(sorted(out.items()))

    def versions(self) -> list[str]:
        """Model versions that have rows in this view."""
        return sorted({v for f in self.fragments.values() for v in f.counts})

    def rows(self, version: str) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(ids, labels, vectors) of one version's rows, fragment by fragment (nothing concatenated)."""
        for _, f in sorted(self.fragments.items()):
            if version in f.counts:
                yield f.ids_of(version), f.labels(version), f.vectors(version)

    def ids_of(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row ids and model versions of kernel labels (row addresses); None where a label is -1 (no hit)."""
        ids = np.full(labels.shape, None, dtype=object)
        versions = np.full(labels.shape, None, dtype=object)
        hit = labels >= 0
        fids, offs = labels >> 32, labels & 0xFFFFFFFF
        for fid in np.unique(fids[hit]):
            f = self._by_fid[int(fid)]
            m = hit & (fids == fid)
            pos = f.find(offs[m])
            ids[m], versions[m] = f.read.ids[pos], f.read.versions[pos]
        return ids, versions

    def vectors_of(self, version: str, labels: np.ndarray, mapper: Mapper | None = None) -> np.ndarray:
        """The stored vectors of live `version` rows by kernel label (row address), in the plan's space."""
        fids, offs = labels >> 32, labels & 0xFFFFFFFF
        found: list[np.ndarray] = []
        where: list[np.ndarray] = []
        for fid in np.unique(fids):
            m = np.nonzero(fids == fid)[0]
            f = self._by_fid.get(int(fid))
            pos = f.find(offs[m]) if f is not None else None
            if pos is None or version not in f.read.masks or not f.read.masks[version][pos].all():
                raise RuntimeError(f"search kernel holds rows that are not live {version} rows (stale kernel)")
            found.append(np.asarray(f.read.vectors[version][f.read.slots[pos]]))
            where.append(m)
        if not found:
            return np.zeros((0, 0), np.float32)
        vectors = np.concatenate(found)[np.argsort(np.concatenate(where), kind="stable")]
        return mapper(vectors) if mapper else vectors

    # ---- kernels -------------------------------------------------------------------------
    def search(self, version: str, queries: np.ndarray, k: int, name: str, ann: str,
               plan_key: str = "", mapper: Mapper | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, labels) among one version's rows, in the plan's space (`mapper` maps stored
        vectors); an ivfpq kernel's candidates (candidates_for(k, its calibrated depth)) are re-scored on the stored vectors."""
        kernel = self.kernel(version, name, ann, plan_key, mapper)
        if ann != "ivfpq":
            return kernel.search(queries, k)
        _, candidates = kernel.search(queries, candidates_for(k, kernel.rerank))  # type: ignore[attr-defined]
        return rerank(queries, candidates, lambda labels: self.vectors_of(version, labels, mapper), k)

    def kernel(self, version: str, name: str, ann: str, plan_key: str = "", mapper: Mapper | None = None) -> Kernel:
        """The kernel over one version's rows: kept, loaded from disk and brought up to date, or built."""
        key = (version, name, ann, plan_key)
        state = self._kernels.get(key)
        if state is not None:
            return state.kernel
        with self._building:
            state = self._kernels.get(key)
            if state is None and ann != "flat" and self.gallery_dir is not None:
                state = _load_kernel(self.gallery_dir, key)
                if state is not None and not self._sync(key, state, {}, mapper):
                    state = None
            if state is None:
                state = self._build(key, mapper)
            self._kernels[key] = state
            return state.kernel

    def _parts(self, version: str, mapper: Mapper | None, keys: list[str] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        chosen = [self.fragments[k] for k in (keys if keys is not None else sorted(self.fragments))]
        return [(f.labels(version), np.asarray(mapper(f.vectors(version)) if mapper else f.vectors(version)))
                for f in chosen if version in f.counts]

    def _build(self, key: tuple[str, ...], mapper: Mapper | None) -> KernelState:
        version, name, ann, _ = key
        parts = self._parts(version, mapper)
        dim = parts[0][1].shape[1] if parts else 1
        covered = {k: f for k, f in self.fragments.items() if version in f.counts}
        lookup = (lambda labels: self.vectors_of(version, labels, mapper)) if ann == "ivfpq" else None
        state = KernelState(build_kernel(name, ann, dim, parts, lookup), {k: f.deletion for k, f in covered.items()},
                            {k: f.fid for k, f in covered.items()}, mapper)
        if ann != "flat" and self.gallery_dir is not None and hasattr(state.kernel, "index"):
            _save_kernel(self.gallery_dir, key, state)
        return state

    def _sync(self, key: tuple[str, ...], state: KernelState, before: dict[str, FragmentRows], mapper: Mapper | None = None) -> bool:
        """Bring a kernel to this view's rows in place; False when it must be rebuilt instead.

        Deleted rows of a fragment still present are removed by label when the older rows are
        at hand, else the fragment's whole label range is removed and its live rows re-added.
        """
        version, _, ann, _ = key
        mapper = mapper or state.mapper
        cur = {k: f for k, f in self.fragments.items() if version in f.counts}
        gone = [k for k in state.covers if k not in cur]
        changed = [k for k in state.covers if k in cur and state.covers[k] != cur[k].deletion]
        exact = [k for k in changed if k in before and before[k].read is cur[k].read]
        readd = [k for k in changed if k not in exact]
        ranges = [(state.fids[k] << 32, (state.fids[k] + 1) << 32) for k in gone + readd]
        moves = [cur[k].changes_since(before[k], version) for k in exact]
        removed = np.concatenate([m[0] for m in moves]) if moves else np.zeros(0, np.int64)
        if (ranges or len(removed)) and not state.kernel.remove(removed, ranges):
            return False
        added = [k for k in cur if k not in state.covers] + readd
        revived = [(m[1], mapper(m[2]) if mapper else m[2]) for m in moves if len(m[1])]
        for labels_, vectors in self._parts(version, mapper, added) + revived:
            state.kernel.add(labels_, vectors)
        state.covers = {k: f.deletion for k, f in cur.items()}
        state.fids = {k: f.fid for k, f in cur.items()}
        state.mapper = mapper
        state.dirty += len(removed) + sum(cur[k].counts[version] for k in added) + sum(len(r[0]) for r in revived)
        trained_on = getattr(state.kernel, "trained_on", 0)
        if ann in IVF_KINDS and trained_on and state.kernel.ntotal > RETRAIN_GROWTH * trained_on:
            return False
        if ann != "flat" and state.dirty > SAVE_DIRTY * max(1, state.kernel.ntotal) and self.gallery_dir is not None:
            _save_kernel(self.gallery_dir, key, state)
        return True
