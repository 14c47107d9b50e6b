"""What a person looking at a gallery wants first: size, model lineage, rows per model, kernel.

Read from the search snapshot (row counts per model are kept there), so it costs the same at
1M rows as at 1k: no table scan, no rows listed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compatret.engine.service import Service
from compatret.search.kernels import backend_name
from compatret.store.meta import GalleryMeta

if TYPE_CHECKING:
    from compatret.engine.sharded import ShardedService
from compatret.store.pending import pending_rows


def disk_bytes(directory: str | Path) -> int:
    """Bytes on disk under the gallery folder: table versions, caches and kernels included."""
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # removed by a compaction or prune meanwhile
                continue
    return total


def lineage_entries(meta: GalleryMeta, counts: dict[str, int]) -> list[dict[str, Any]]:
    """The serving model's lineage, oldest first, with each model's rule and rows."""
    return [
        {
            "id": v.id,
            "dim": v.dim,
            "rule": str(v.compat) if v.parent is not None else "root",
            "method": v.method,
            "rows": counts.get(v.id, 0),
            "serving": v.id == meta.serving.id,
        }
        for v in reversed(meta.serving.lineage())
    ]


def overview(service: Service) -> dict[str, Any]:
    """The gallery as searched now: serving model, lineage oldest first with each model's rule and
    rows, the models a query may name, and the table version this view derives from."""
    index = service.index
    counts = index.counts()
    return _described(service.gallery.meta_at(index.table_version), counts, service, index.table_version, service.gallery.path)


def _described(meta: GalleryMeta, counts: dict[str, int], service: Any, version: int, folder: Path) -> dict[str, Any]:
    return {
        "rows": int(sum(counts.values())),
        "rows_by_version": counts,
        "dim": meta.dim,
        "metric": meta.metric,
        "modality": meta.modality,
        "serving": meta.serving.id,
        "lineage": lineage_entries(meta, counts),
        "query_models": sorted(service.lineage(meta)),
        "kernel": backend_name(service.kernel_name),
        "ann": meta.ann,
        "table_version": version,
        "disk_bytes": disk_bytes(folder),
    }


def info(service: Service) -> dict[str, Any]:
    """Everything about a gallery in one dict (`index info --json`): rows per model and per plan,
    the lineage with each model's rule, the kernel, the history."""
    bare = pending_rows(service.gallery).unembeddable
    meta = service.meta
    plan = service.plan()
    counts = service.rows_by_version()
    return {
        "path": str(service.gallery.path),
        "rows": service.gallery.count(),
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
        "rows_by_plan": service.rows_by_plan(counts),
        "groups": [
            {"model": v, "rows": n, "dim": meta.version(v).dim, "plan_dims": p.dims, "plan_transforms": len(p.gallery_transforms)}
            for v, n in counts.items()
            for p in [service._plan(meta.serving, meta.version(v))]
        ],
        "table_version": service.gallery.version,
        "unembeddable": len(bare),
        "unembeddable_examples": bare[:5],
        "kernel": backend_name(service.kernel_name),
        "history": list(meta.history),
    }


def sharded_overview(service: ShardedService) -> dict[str, Any]:
    """What `overview` says of one gallery, for a sharded gallery's published snapshot
    (`table_version` is the snapshot number)."""
    snap = service.snapshot
    return _described(service.meta, service.rows_by_version(), service.shards[0], snap.snapshot, service.root)


def sharded_info(service: ShardedService) -> dict[str, Any]:
    """What `index info` says of a sharded gallery: the published snapshot, and each shard."""
    snap, meta = service.snapshot, service.meta
    per_shard = [s.gallery.dataset(v).count_rows() for s, v in zip(service.shards, snap.versions)]
    return {
        "path": str(service.root),
        "shards": snap.shards,
        "hash": snap.hash,
        "snapshot": snap.snapshot,
        "rows": sum(per_shard),
        "rows_by_version": service.rows_by_version(),
        "dim": meta.dim,
        "vector_model": meta.vector_model.id,
        "serving_model": meta.serving.id,
        "lineage": [v.id for v in reversed(meta.serving.lineage())],
        "shard_rows": per_shard,
        "shard_versions": list(snap.versions),
        "history": service.history()[-5:],
    }
