"""The search side of a gallery: a derived view of the table, brought forward from the table itself.

The LanceDB table is the only truth. A Lance table is a list of fragments; a fragment's data
files never change (an update deletes rows and writes new ones elsewhere), only its deletion
file grows. So the view is kept per fragment, keyed by the fragment's data file names:

- a fragment whose files and deletion file are unchanged is reused as it is;
- a fragment with a new deletion file keeps the rows still alive (read from the table's row
  addresses, no data read);
- a new fragment is read from the table (or from its cache file `search/frag-*.npz`, which
  names the data files it was read from and so can never describe other rows).

Refreshing from version V to W therefore costs what changed between them, whichever
process wrote it, and a reader never mixes two versions: each SearchIndex is the view of
exactly one table version (`table_version`). A missing or damaged cache file costs time,
never data.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compatret.index.gallery import Gallery, GalleryMeta, Group
from compatret.index.search import Kernel, make_kernel

CACHE_DIR = "search"
FORMAT = 2


@dataclass
class FragmentRows:
    """The live rows of one Lance fragment: ids, row versions, and each row's current vector."""

    key: str  # fragment id + digest of its data file names
    deletion: str | None  # the deletion file these rows reflect
    offsets: np.ndarray  # int64 physical row offsets in the fragment, ascending
    ids: np.ndarray  # object array of str
    versions: np.ndarray  # str array: the model version of each row
    vectors: dict[str, np.ndarray]  # version -> float32 [rows of that version, dim], in offset order

    def keep(self, live: np.ndarray, deletion: str | None) -> FragmentRows | None:
        """These rows restricted to the `live` offsets; None when some live row was never read."""
        mask = np.isin(self.offsets, live)
        if int(mask.sum()) != len(live):
            return None
        vectors = {v: vec[mask[self.versions == v]] for v, vec in self.vectors.items()}
        return FragmentRows(self.key, deletion, self.offsets[mask], self.ids[mask], self.versions[mask],
                            {v: x for v, x in vectors.items() if len(x)})


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
    ids = t.column("id").to_numpy(zero_copy_only=False).astype(str).astype(object)
    return FragmentRows(key, deletion, offsets[order], ids, versions, vectors)


def live_offsets(fragment: Any) -> np.ndarray:
    """Offsets of the rows a fragment still holds: row addresses only, no column data read."""
    t = fragment.to_table(columns=[], with_row_address=True)
    return np.sort((t.column("_rowaddr").to_numpy() & 0xFFFFFFFF).astype(np.int64))


class FragmentCache:
    """Per-fragment files under `search/`: written to a temporary name, then renamed into place."""

    def __init__(self, gallery_dir: Path) -> None:
        self.dir = gallery_dir / CACHE_DIR

    def file(self, key: str) -> Path:
        return self.dir / f"frag-{key}.npz"

    def load(self, key: str) -> FragmentRows | None:
        try:
            with np.load(self.file(key), allow_pickle=False) as z:
                if int(z["format"]) != FORMAT or str(z["key"]) != key:
                    return None
                names = [str(v) for v in z["vector_versions"]]
                deletion = str(z["deletion"]) or None
                return FragmentRows(key, deletion, z["offsets"], z["ids"].astype(object), z["versions"].astype(str),
                                    {v: z[f"vec_{i}"] for i, v in enumerate(names)})
        except (OSError, ValueError, KeyError):
            return None

    def save(self, rows: FragmentRows, table_version: int) -> None:
        self.dir.mkdir(exist_ok=True)
        target = self.file(rows.key)
        tmp = target.with_name(f".tmp-{os.getpid()}-{target.name}")
        arrays: dict[str, Any] = {
            "format": np.int64(FORMAT), "key": np.str_(rows.key), "deletion": np.str_(rows.deletion or ""),
            "read_at_version": np.int64(table_version), "offsets": rows.offsets,
            "ids": np.asarray(rows.ids, dtype=str), "versions": rows.versions.astype(str),
            "vector_versions": np.array(list(rows.vectors), dtype=str),
        }
        for i, vec in enumerate(rows.vectors.values()):
            arrays[f"vec_{i}"] = vec
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, target)

    def drop(self, keys: set[str]) -> None:
        """Forget files of fragments the table no longer has (a reader still at an older version re-reads them)."""
        for key in keys:
            self.file(key).unlink(missing_ok=True)

    def clear(self) -> None:
        """Remove every cache file (verify --repair rebuilds them from the table)."""
        if self.dir.exists():
            for f in self.dir.iterdir():
                if f.is_file():
                    f.unlink(missing_ok=True)


class SearchIndex:
    """The rows of one table version, grouped by model version, plus kernels built over them."""

    def __init__(self, fragments: dict[str, FragmentRows], table_version: int) -> None:
        self.fragments = fragments
        self.table_version = table_version
        self._groups: dict[str, Group] = {}
        self._kernels: dict[tuple[str, str, str], Kernel] = {}

    @staticmethod
    def load(gallery: Gallery, version: int | None = None) -> SearchIndex:
        """The view of table `version` (default: the gallery handle's), from cache files or the table."""
        return SearchIndex({}, -1).advanced(gallery, gallery.version if version is None else version)

    def advanced(self, gallery: Gallery, version: int) -> SearchIndex:
        """The view of table `version` as a new object, reading only what changed since this one.

        Unchanged fragments, groups and kernels are shared (none is ever modified in place),
        so a query still holding this view keeps a consistent snapshot.
        """
        if version == self.table_version:
            return self
        ds = gallery.dataset(version)
        meta = gallery.meta_at(version)
        cache = FragmentCache(gallery.path)
        fresh: dict[str, FragmentRows] = {}
        for fragment in ds.get_fragments():
            key, deletion = fragment_key(fragment), deletion_of(fragment)
            rows = self.fragments.get(key) or cache.load(key)
            if rows is not None and rows.deletion != deletion:
                rows = rows.keep(live_offsets(fragment), deletion)
            if rows is None:
                rows = read_fragment(fragment, meta, key, deletion)
                cache.save(rows, version)
            fresh[key] = rows
        changed = {v for k in set(self.fragments) | set(fresh) if self.fragments.get(k) is not fresh.get(k)
                   for rows in (self.fragments.get(k), fresh.get(k)) if rows is not None for v in rows.vectors}
        cache.drop(set(self.fragments) - set(fresh))
        out = SearchIndex(fresh, version)
        out._groups = {v: g for v, g in self._groups.items() if v not in changed}
        out._kernels = {k: x for k, x in self._kernels.items() if k[0] not in changed}
        return out

    # ---- the grouped view -----------------------------------------------------------------
    @property
    def groups(self) -> dict[str, Group]:
        """Rows per model version (ids and vectors), built once per change of that version's rows."""
        present = sorted({v for f in self.fragments.values() for v in f.vectors})
        for v in present:
            if v not in self._groups:
                parts = [f for _, f in sorted(self.fragments.items()) if v in f.vectors]
                ids = np.concatenate([f.ids[f.versions == v] for f in parts])
                self._groups[v] = Group(v, ids, np.concatenate([f.vectors[v] for f in parts]))
        return {v: self._groups[v] for v in present}

    @property
    def size(self) -> int:
        return sum(len(f.ids) for f in self.fragments.values())

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.fragments.values():
            for v, vec in f.vectors.items():
                out[v] = out.get(v, 0) + len(vec)
        return dict(sorted(out.items()))

    def kernel(self, version: str, name: str = "auto", ann: str = "flat", vectors: np.ndarray | None = None, key: str = "") -> Kernel:
        """The kernel over one group's vectors (or over `vectors` derived from them, named by key)."""
        k = (version, name + ":" + ann, key)
        if k not in self._kernels:
            self._kernels[k] = make_kernel(name, self.groups[version].vectors if vectors is None else vectors, ann=ann)
        return self._kernels[k]
