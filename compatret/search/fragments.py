"""Per-fragment rows read from the table, and their sealed on-disk cache, keyed by fragment and deletion file."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import uuid
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from compatret.store.meta import GalleryMeta
from compatret.store.sealed import Damaged, no_space, npy_bytes, npy_from, npz_bytes, read_sealed, write_sealed

CACHE_DIR = "search"
FORMAT = 4  # 4: folders sealed with digests (older folders are read again from the table)
log = logging.getLogger(__name__)
_PROBLEMS: dict[Path, str] = {}  # gallery folder -> why its cache cannot be written now (this process)


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
        return (
            base | self.read.offsets[before & ~now & mine],
            base | self.read.offsets[mine][back],
            np.asarray(self.read.vectors[version])[back],
        )

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
            files = {
                "rows.npz": npz_bytes(
                    format=np.int64(FORMAT),
                    key=np.str_(rows.key),
                    fid=np.int64(rows.fid),
                    deletion=np.str_(rows.deletion or ""),
                    read_at_version=np.int64(table_version),
                    offsets=read.offsets,
                    ids=read.ids,
                    versions=read.versions,
                    vector_versions=np.array(list(read.vectors), dtype=str),
                )
            }
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
    log.debug("search cache write under %s failed", gallery_dir, exc_info=exc)
    reason = "no space left on device" if no_space(exc) else (exc.strerror or str(exc))
    note_problem(gallery_dir, f"cannot write the search cache ({reason}): serving from memory")
