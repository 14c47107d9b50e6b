"""The search side of a gallery: each model version's rows and vectors, cached next to the table.

The LanceDB table is the truth. The cache is one file per table version
(`search/index-<version>.npz`), written to a temporary name and renamed into place, so a
reader never sees a half-written or mixed cache, even with a backfill writing from another
process. A table version without its cache file is rebuilt from the table: a crash costs
time, never data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from compatret.index.gallery import Gallery, Group
from compatret.index.search import Kernel, make_kernel

CACHE_DIR = "search"


def _cache_file(gallery: Gallery, table_version: int) -> Path:
    return gallery.path / CACHE_DIR / f"index-{table_version}.npz"


class SearchIndex:
    """Row ids and vectors per model version, plus the kernels built over them."""

    def __init__(self, groups: dict[str, Group], table_version: int) -> None:
        self.groups = {k: g for k, g in groups.items() if len(g.ids)}
        self.table_version = table_version
        self._kernels: dict[tuple[str, str, str], Kernel] = {}
        self._pos: dict[str, str] | None = None

    @property
    def size(self) -> int:
        return sum(len(g.ids) for g in self.groups.values())

    @property
    def ids(self) -> np.ndarray:
        """All ids, group after group."""
        if not self.groups:
            return np.zeros(0, dtype=object)
        return np.concatenate([g.ids for g in self.groups.values()])

    def counts(self) -> dict[str, int]:
        return {v: len(g.ids) for v, g in self.groups.items()}

    # ---- persistence -------------------------------------------------------------------
    @staticmethod
    def load(gallery: Gallery) -> SearchIndex:
        """The cached index of the table's current version, else one rebuilt from the table."""
        version = gallery.version
        path = _cache_file(gallery, version)
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    names = [str(v) for v in z["versions"]]
                    groups = {v: Group(v, z[f"ids_{i}"].astype(object), z[f"vec_{i}"]) for i, v in enumerate(names)}
                return SearchIndex(groups, version)
            except (OSError, ValueError, KeyError):
                pass
        index = SearchIndex(gallery.scan_groups(), version)
        index.save(gallery)
        return index

    def save(self, gallery: Gallery) -> None:
        d = gallery.path / CACHE_DIR
        d.mkdir(exist_ok=True)
        target = _cache_file(gallery, self.table_version)
        tmp = target.with_name(f".tmp-{os.getpid()}-{target.name}")
        arrays: dict[str, np.ndarray] = {"versions": np.array(list(self.groups), dtype=str)}
        for i, g in enumerate(self.groups.values()):
            arrays[f"ids_{i}"] = np.asarray(g.ids, dtype=str)
            arrays[f"vec_{i}"] = g.vectors
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, target)
        self._drop_other_caches(gallery, keep=target.name)

    @staticmethod
    def _drop_other_caches(gallery: Gallery, keep: str) -> None:
        for f in (gallery.path / CACHE_DIR).glob("index-*.npz"):
            if f.name != keep:
                f.unlink(missing_ok=True)

    @staticmethod
    def follow_metadata_commit(gallery: Gallery, old_version: int) -> None:
        """Carry a cache across a commit that changed no rows: a hard link, O(1) at any size."""
        old, new = _cache_file(gallery, old_version), _cache_file(gallery, gallery.version)
        if old.exists() and not new.exists():
            try:
                os.link(old, new)
            except OSError:
                return

    # ---- updates that follow a committed write -----------------------------------------
    def add(self, version: str, ids: Sequence[str], vectors: np.ndarray, table_version: int) -> None:
        new_ids = np.asarray([str(i) for i in ids], dtype=object)
        g = self.groups.get(version)
        if g is None:
            self.groups[version] = Group(version, new_ids, np.ascontiguousarray(vectors, dtype=np.float32))
        else:
            g.ids = np.concatenate([g.ids, new_ids])
            g.vectors = np.concatenate([g.vectors, vectors.astype(np.float32)])
        self.table_version = table_version
        self._invalidate(version)

    def remove(self, ids: Sequence[str], table_version: int) -> None:
        gone = set(ids)
        for v, g in list(self.groups.items()):
            keep = np.fromiter((i not in gone for i in g.ids), dtype=bool, count=len(g.ids))
            if not keep.all():
                g.ids, g.vectors = g.ids[keep], g.vectors[keep]
                self._invalidate(v)
                if not len(g.ids):
                    del self.groups[v]
        self.table_version = table_version

    def move(self, version: str, ids: Sequence[str], vectors: np.ndarray, table_version: int) -> None:
        """Rows re-embedded by `version` (a backfill batch) leave their old groups."""
        self.remove(ids, table_version)
        self.add(version, ids, vectors, table_version)

    def contains(self, ids: Sequence[str]) -> list[str]:
        """Which of `ids` are present."""
        if self._pos is None:
            self._pos = {str(i): v for v, g in self.groups.items() for i in g.ids}
        return [i for i in ids if i in self._pos]

    # ---- kernels -------------------------------------------------------------------------
    def kernel(self, version: str, name: str = "auto", ann: str = "flat", vectors: np.ndarray | None = None, key: str = "") -> Kernel:
        """The kernel over one group's vectors (or over `vectors` derived from them, named by key)."""
        k = (version, name + ":" + ann, key)
        if k not in self._kernels:
            self._kernels[k] = make_kernel(name, self.groups[version].vectors if vectors is None else vectors, ann=ann)
        return self._kernels[k]

    def _invalidate(self, version: str) -> None:
        self._kernels = {k: v for k, v in self._kernels.items() if k[0] != version}
        self._pos = None
