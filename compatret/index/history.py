"""History, rollback and pruning: every upgrade and backfill batch is a LanceDB version."""

from __future__ import annotations

import datetime as dt
from typing import Any

from compatret.errors import CompatretError
from compatret.index.gallery import META_KEY, GalleryMeta
from compatret.index.service import Service
from compatret.index.writer_lock import retry_commit

REWRITE = "vectors rewritten"  # a Lance Update with the same rows and metadata: a backfill batch


def history(service: Service) -> list[dict[str, Any]]:
    """One entry per table version: when, how many rows, which model served, what happened."""
    table = service.gallery.table
    snapshot = service.gallery.open_snapshot()
    lance_ds = service.gallery.dataset(service.gallery.latest_version())
    out: list[dict[str, Any]] = []
    seen_events, rows_before = 0, 0
    for v in table.list_versions():
        snapshot.checkout(v["version"])
        raw = (snapshot.schema.field("vector").metadata or {}).get(META_KEY.encode())
        meta = GalleryMeta.from_json(raw.decode()) if raw else None
        rows = int(v.get("metadata", {}).get("total_rows", -1))
        events = len(meta.history) if meta else 0
        if not out:
            change = "table created"
        elif events > seen_events and meta is not None:
            change = str(meta.history[-1].get("event"))
        elif rows != rows_before:
            change = f"rows {rows - rows_before:+d}"
        else:
            change = _operation(lance_ds, int(v["version"]))
        out.append({"version": int(v["version"]), "time": v["timestamp"].astimezone(dt.timezone.utc).isoformat(timespec="seconds"), "rows": rows,
                    "serving": meta.serving.id if meta else None, "change": change})
        seen_events, rows_before = events, rows
    return out


OPERATIONS = {"Update": REWRITE, "CreateIndex": "index built", "Merge": "column added", "Project": "columns changed",
              "Rewrite": "compacted", "UpdateConfig": "metadata changed"}


def _operation(ds: Any, version: int) -> str:
    """What a version with the same rows and metadata did, from its Lance transaction."""
    try:
        tx = ds.read_transaction(version)
    except Exception:  # noqa: BLE001  # pylance cannot rebuild some operations (a compaction's RewrittenIndex: TypeError)
        tx = None
    name = type(tx.operation).__name__ if tx is not None else ""
    return OPERATIONS.get(name, f"table rewritten ({name or 'unknown'})")


def grouped(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs of consecutive rewrites under one serving model (a backfill's batches) as one entry
    naming its first and last version and its batch count; other entries as they are."""
    out: list[dict[str, Any]] = []
    for e in entries:
        if e["change"] != REWRITE:
            out.append(dict(e))
            continue
        if not (out and out[-1].get("batches") and out[-1]["serving"] == e["serving"]):
            out.append({**e, "batches": 0})
        run = out[-1]
        run.update(to_version=e["version"], time=e["time"], rows=e["rows"], batches=run["batches"] + 1)
        run["change"] = f"backfill to {e['serving']}: {run['batches']} batch{'es' if run['batches'] > 1 else ''}"
    return out


def rollback(service: Service, to: int) -> GalleryMeta:
    """Restore the rows, vectors and serving model of version `to` as a new version."""
    gallery = service.gallery
    with gallery.writing("rollback"):
        versions = {int(v["version"]) for v in gallery.table.list_versions()}
        if to not in versions:
            raise CompatretError(f"no version {to} (have {min(versions)}..{max(versions)}; pruned versions are gone)")
        current = gallery.version
        retry_commit(lambda: gallery.table.restore(to), "rollback", gallery.table.checkout_latest)
        meta = gallery.with_event("rollback", to=to, from_version=current)
        gallery.set_meta(meta)
    return meta


def prune(service: Service, older_than: dt.timedelta) -> dict[str, int]:
    """Compact the table and delete versions older than `older_than` (the current one stays).

    Files of an unfinished write by another process are kept (delete_unverified=False).
    """
    gallery = service.gallery
    with gallery.writing("prune"):
        before = len(gallery.table.list_versions())
        retry_commit(lambda: gallery.table.optimize(cleanup_older_than=older_than), "prune", gallery.table.checkout_latest)
        after = len(gallery.table.list_versions())
    return {"versions_before": before, "versions_after": after}
