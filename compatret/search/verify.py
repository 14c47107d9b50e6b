"""`index verify`: compare the derived search cache with the table, like fsck for a gallery.

The table is read fresh, fragment by fragment, and every cache file that describes a
fragment of the current version is checked against it: ids, each row's model version,
and a hash of each vector (a folder that fails its seal is reported as damaged). The lineage is checked too: every row's model must be known to
the gallery and readable by the serving model. `repair` deletes the cache and rebuilds it
from the table (readers that hold an older view simply rebuild theirs).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compatret.core.contract import resolve
from compatret.core.errors import CompatretError
from compatret.search.fragments import FragmentCache, FragmentRows, deletion_of, fragment_key, live_offsets, read_fragment
from compatret.search.kernel_files import kernel_files
from compatret.search.view import SearchIndex
from compatret.store.gallery import Gallery
from compatret.store.sealed import Damaged


@dataclass
class VerifyReport:
    """What differs between the table and its cache; `ok` when nothing does."""

    table_version: int
    rows: int
    fragments: int
    cached_fragments: int = 0
    mismatches: list[str] = field(default_factory=list)
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "table_version": self.table_version,
            "rows": self.rows,
            "fragments": self.fragments,
            "cached_fragments": self.cached_fragments,
            "mismatches": self.mismatches,
            "repaired": self.repaired,
        }


def _vector_digest(rows: FragmentRows) -> dict[str, str]:
    """id -> hash of (model version, vector bytes)."""
    out: dict[str, str] = {}
    for v in rows.counts:
        for i, x in zip(rows.ids[rows.versions == v], rows.vectors(v)):
            out[str(i)] = hashlib.blake2b(v.encode() + np.ascontiguousarray(x, dtype=np.float32).tobytes(), digest_size=8).hexdigest()
    return out


def _compare(key: str, cached: FragmentRows, truth: FragmentRows) -> list[str]:
    problems = []
    if not np.array_equal(cached.offsets, truth.offsets) or list(cached.ids) != list(truth.ids):
        extra = sorted(set(map(str, cached.ids)) - set(map(str, truth.ids)))
        lost = sorted(set(map(str, truth.ids)) - set(map(str, cached.ids)))
        problems.append(
            f"fragment {key}: cache has {len(extra)} rows the table lacks (e.g. {extra[:3]}), "
            f"lacks {len(lost)} rows the table has (e.g. {lost[:3]})"
        )
    if list(cached.versions) != list(truth.versions):
        problems.append(f"fragment {key}: row model versions differ")
    a, b = _vector_digest(cached), _vector_digest(truth)
    differ = sorted(i for i in set(a) & set(b) if a[i] != b[i])
    if differ:
        problems.append(f"fragment {key}: {len(differ)} vectors differ (e.g. {differ[:3]})")
    return problems


def _damaged_kernels(cache: FragmentCache) -> list[str]:
    """Saved search kernels whose files fail their seal (a query would discard and rebuild them)."""
    problems = []
    for d in sorted(cache.dir.glob("kernel-*")) if cache.dir.is_dir() else []:
        try:
            kernel_files(d)
        except (Damaged, ValueError, KeyError) as exc:
            problems.append(f"kernel {d.name}: cache file damaged ({exc})")
    return problems


def verify(gallery: Gallery, repair: bool = False) -> VerifyReport:
    """Check every cache file of the latest version against the table; optionally rebuild the cache."""
    version = gallery.latest_version()
    meta = gallery.meta_at(version)
    cache = FragmentCache(gallery.path)
    fragments = gallery.dataset(version).get_fragments()
    report = VerifyReport(version, gallery.count(), len(fragments))
    for fragment in fragments:
        key, deletion = fragment_key(fragment), deletion_of(fragment)
        if not cache.file(key).exists():
            continue
        try:
            cached = cache.read(key)
        except Damaged as exc:
            report.mismatches.append(f"fragment {key}: cache file damaged ({exc})")
            continue
        report.cached_fragments += 1
        if cached.deletion != deletion:
            kept = cached.keep(live_offsets(fragment), deletion)
            if kept is None:
                report.mismatches.append(f"fragment {key}: cache lacks rows the table still holds")
                continue
            cached = kept
        report.mismatches += _compare(key, cached, read_fragment(fragment, meta, key, deletion))
    report.mismatches += _damaged_kernels(cache)
    present = gallery.scan(["model_version"]).column("model_version").unique().to_pylist()
    for v in present:
        try:
            resolve(meta.serving, meta.version(str(v)), gallery.path)
        except CompatretError as exc:
            report.mismatches.append(f"lineage: {exc}")
    if repair:
        cache.clear()
        SearchIndex.load(gallery, version)
        again = verify(gallery)
        again.repaired = True
        return again
    return report
