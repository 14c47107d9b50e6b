"""The search side of a gallery: ids and vectors cached next to the table, checked by table version.

The LanceDB table is the truth. The cache (`search/` in the gallery folder) is written with
atomic renames, its state file last; a cache whose recorded table version differs from the
table's is rebuilt from the table, so a crash between the two writes costs time, not data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from compatret.index.gallery import Gallery
from compatret.index.search import Kernel, make_kernel

CACHE_DIR = "search"


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


class SearchIndex:
    """Row ids aligned with their vectors, plus the kernels built over them."""

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, table_version: int) -> None:
        self.ids = np.asarray(ids).astype(object)  # Python strs: hits become lists without conversion
        self.vectors = vectors
        self.table_version = table_version
        self._kernels: dict[str, Kernel] = {}
        self._pos: dict[str, int] | None = None

    @property
    def size(self) -> int:
        return len(self.ids)

    @staticmethod
    def _dir(gallery: Gallery) -> Path:
        return gallery.path / CACHE_DIR

    @staticmethod
    def _state(gallery: Gallery) -> dict[str, int] | None:
        state = SearchIndex._dir(gallery) / "state.json"
        try:
            return json.loads(state.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    @staticmethod
    def load(gallery: Gallery) -> SearchIndex:
        """The cached index if it matches the table, else one rebuilt from the table (and saved)."""
        d = SearchIndex._dir(gallery)
        state = SearchIndex._state(gallery)
        if state is not None and state.get("table_version") == gallery.version:
            try:
                ids = np.load(d / "ids.npy")
                vectors = np.load(d / "vectors.npy", mmap_mode="r")
                if len(ids) == len(vectors) == state.get("rows"):
                    return SearchIndex(ids, np.ascontiguousarray(vectors), gallery.version)
            except (FileNotFoundError, ValueError, OSError):
                pass
        ids, vectors = gallery.scan_vectors()
        index = SearchIndex(ids, vectors, gallery.version)
        index.save(gallery)
        return index

    def save(self, gallery: Gallery) -> None:
        d = self._dir(gallery)
        d.mkdir(exist_ok=True)
        (d / "state.json").unlink(missing_ok=True)
        _atomic_save(d / "ids.npy", np.asarray(self.ids, dtype=str))
        _atomic_save(d / "vectors.npy", self.vectors)
        self.mark_version(gallery, self.table_version)

    def mark_version(self, gallery: Gallery, table_version: int) -> None:
        """Record that the cache matches `table_version` (after a metadata-only commit, say)."""
        self.table_version = table_version
        d = self._dir(gallery)
        d.mkdir(exist_ok=True)
        tmp = d / "state.json.tmp"
        tmp.write_text(json.dumps({"table_version": table_version, "rows": self.size}))
        os.replace(tmp, d / "state.json")

    @staticmethod
    def follow_metadata_commit(gallery: Gallery, old_version: int) -> None:
        """Carry a valid cache across a commit that changed no rows, without reading it."""
        state = SearchIndex._state(gallery)
        if state is not None and state.get("table_version") == old_version:
            d = SearchIndex._dir(gallery)
            tmp = d / "state.json.tmp"
            tmp.write_text(json.dumps({**state, "table_version": gallery.version}))
            os.replace(tmp, d / "state.json")

    def append(self, ids: np.ndarray, vectors: np.ndarray, table_version: int) -> None:
        self.ids = np.concatenate([self.ids, np.asarray(ids).astype(str).astype(object)])
        self.vectors = np.concatenate([self.vectors, vectors.astype(np.float32)])
        self.table_version = table_version
        self._invalidate()

    def remove(self, ids: Sequence[str], table_version: int) -> None:
        gone = set(ids)
        keep = np.fromiter((i not in gone for i in self.ids), dtype=bool, count=len(self.ids))
        self.ids = self.ids[keep]
        self.vectors = self.vectors[keep]
        self.table_version = table_version
        self._invalidate()

    def contains(self, ids: Sequence[str]) -> list[str]:
        """Which of `ids` are already present."""
        if self._pos is None:
            self._pos = {str(i): n for n, i in enumerate(self.ids)}
        return [i for i in ids if i in self._pos]

    def kernel(self, name: str = "auto") -> Kernel:
        if name not in self._kernels:
            self._kernels[name] = make_kernel(name, self.vectors)
        return self._kernels[name]

    def _invalidate(self) -> None:
        self._kernels.clear()
        self._pos = None
