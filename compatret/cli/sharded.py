"""The `compatret index` commands on a sharded gallery: the same options, the same one-line errors;
what differs is that every change is published as one snapshot (see `engine.sharded`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from compatret.cli.output import emit

if TYPE_CHECKING:
    from compatret.engine.ray_cluster import RayOptions
    from compatret.engine.sharded import ShardedService


def is_sharded(directory: str) -> bool:
    """Whether DIRECTORY holds a sharded gallery (its snapshot log)."""
    from compatret.store.snapshots import SnapshotLog

    return SnapshotLog.exists(directory)


def open_sharded(directory: str) -> ShardedService:
    from compatret.engine.sharded import ShardedService

    return ShardedService.open(directory)


def add(
    service: ShardedService,
    items: str | None,
    vectors: Any,
    ids: Any,
    model: str | None,
    batch_size: int,
    skip_empty: bool,
    ray: RayOptions | None,
    as_json: bool,
) -> None:
    """`index add` on a sharded gallery: items or vectors go to their shards, published as one snapshot."""
    empty: list[str] = []
    if items is not None and ray is not None:
        report = service.add_items_on_ray(items, ray, progress=not as_json, skip_empty=skip_empty)
        added, total, empty = report["added"], report["added"] + report["skipped"], report["skipped_empty_ids"]
    elif items is not None:
        from compatret.data.items import read_items

        read = read_items(items, service.meta.modality, skip_empty)
        added, total, empty = (
            service.add_items(read.items, batch_size=batch_size, progress=not as_json),
            len(read.items),
            read.skipped_empty,
        )
    else:
        added, total = service.add_vectors(vectors, ids=ids, model=model, progress=not as_json, ray=ray), len(vectors)
    rows = service.count()
    emit(
        {"added": added, "skipped": total - added, "rows": rows, "snapshot": service.snapshot.snapshot, "skipped_empty_ids": empty},
        as_json,
        f"added {added} rows ({total - added} already stored); {rows} in all; snapshot {service.snapshot.snapshot}"
        + (f"\nleft out {len(empty)} empty items (--skip-empty)" if empty else ""),
    )


def info_text(out: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"gallery        {out['path']} ({out['shards']} shards, rows placed by {out['hash']} of the id)",
            f"rows           {out['rows']}  ({', '.join(f'{k}: {v}' for k, v in out['rows_by_version'].items()) or 'empty'})",
            f"vectors        {out['dim']}-d cosine, gallery created with {out['vector_model']}",
            f"serving        {out['serving_model']}",
            f"lineage        {' -> '.join(out['lineage'])}",
            f"snapshot       {out['snapshot']}: shard versions {out['shard_versions']}, rows per shard {out['shard_rows']}",
        ]
        + [f"history        {h['time']} snapshot {h['snapshot']}: {h['event']} (serving {h['serving']})" for h in out["history"]]
    )


def history_text(rows: list[dict[str, Any]]) -> str:
    return "\n".join(f"{r['snapshot']:>4}  {r['time']}  serving {r['serving']}  {r['event']}  versions {r['versions']}" for r in rows)


def upgrade(service: ShardedService, model: str, as_json: bool, gate: dict[str, Any] | None = None) -> None:
    import time

    before = service.meta.serving.id
    t0 = time.perf_counter()
    meta = service.upgrade(model, gate)
    took = time.perf_counter() - t0
    emit(
        {"previous": before, "serving": meta.serving.id, "snapshot": service.snapshot.snapshot, "seconds": took, "gate": gate},
        as_json,
        f"serving {meta.serving.id} (was {before}) on all {len(service.shards)} shards; nothing re-embedded; "
        f"snapshot {service.snapshot.snapshot}; {took * 1000:.1f} ms",
    )


def verify_text(report: dict[str, Any]) -> str:
    return "\n".join(
        f"shard {i}: table version {r['table_version']}, {r['rows']} rows"
        + (" ok" if r["ok"] else "".join(f"\nMISMATCH {m}" for m in r["mismatches"]))
        for i, r in enumerate(report["shards"])
    )
