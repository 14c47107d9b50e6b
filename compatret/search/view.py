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

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from compatret.search.fragments import FragmentCache, FragmentRows, deletion_of, follow_deletions, fragment_key, read_fragment
from compatret.search.kernel_files import KernelState, Mapper, _load_kernel, _save_kernel
from compatret.search.kernels import IVF_KINDS, Kernel, build_kernel, candidates_for, rerank
from compatret.store.gallery import Gallery

RETRAIN_GROWTH = 4.0  # an IVF kernel is retrained once its group holds this many times its training rows
SAVE_DIRTY = 0.1  # a persisted ANN kernel is rewritten once this fraction of its rows changed
log = logging.getLogger(__name__)


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
                log.warning(
                    "search kernel %s could not be updated to table version %d: rebuilt when next asked", key, version, exc_info=True
                )
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
            if f is None or pos is None or version not in f.read.masks or not f.read.masks[version][pos].all():
                raise RuntimeError(f"search kernel holds rows that are not live {version} rows (stale kernel)")
            found.append(np.asarray(f.read.vectors[version][f.read.slots[pos]]))
            where.append(m)
        if not found:
            return np.zeros((0, 0), np.float32)
        vectors = np.concatenate(found)[np.argsort(np.concatenate(where))]  # positions are distinct: any sort gives one order
        return mapper(vectors) if mapper else vectors

    # ---- kernels -------------------------------------------------------------------------
    def search(
        self, version: str, queries: np.ndarray, k: int, name: str, ann: str, plan_key: str = "", mapper: Mapper | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
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
        return [
            (f.labels(version), np.asarray(mapper(f.vectors(version)) if mapper else f.vectors(version)))
            for f in chosen
            if version in f.counts
        ]

    def _build(self, key: tuple[str, ...], mapper: Mapper | None) -> KernelState:
        version, name, ann, _ = key
        parts = self._parts(version, mapper)
        dim = parts[0][1].shape[1] if parts else 1
        covered = {k: f for k, f in self.fragments.items() if version in f.counts}
        lookup = (lambda labels: self.vectors_of(version, labels, mapper)) if ann == "ivfpq" else None
        state = KernelState(
            build_kernel(name, ann, dim, parts, lookup),
            {k: f.deletion for k, f in covered.items()},
            {k: f.fid for k, f in covered.items()},
            mapper,
        )
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
