"""History, rollback and pruning: every upgrade and backfill batch is a LanceDB version."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from compatret.core.errors import CompatretError
from compatret.store.gallery import Gallery
from compatret.store.meta import META_KEY, GalleryMeta
from compatret.store.writer_lock import retry_commit

REWRITE = "vectors rewritten"  # a Lance Update with the same rows and metadata: a backfill batch

log = logging.getLogger(__name__)


def history(gallery: Gallery) -> list[dict[str, Any]]:
    """One entry per table version: when, how many rows, which model served, what happened.

    A version never changes once written, so its entry is worked out once (checking a version
    out costs milliseconds, and a backfill writes one per batch: thousands) and kept in
    `HISTORY_CACHE`, keyed by version, commit time and the version listed before it (an entry
    describes the change from that one); only versions new since then are read.
    """
    cache = HistoryCache(gallery.path)
    known = cache.load()
    readers: tuple[Any, Any] | None = None
    out: list[dict[str, Any]] = []
    new: list[dict[str, Any]] = []
    for v in gallery.table.list_versions():
        when = v["timestamp"].astimezone(dt.UTC)  # lancedb gives local time: the key must not depend on TZ
        after = out[-1]["version"] if out else None
        entry = known.get(int(v["version"]))
        if entry is None or (entry["stamp"], entry["after"]) != (when.isoformat(), after):
            readers = readers or (gallery.open_snapshot(), gallery.dataset(gallery.latest_version()))
            entry = _entry(v, when, out[-1] if out else None, *readers)
            if entry["change"] != UNREAD:  # a transaction that failed to read may read next time
                new.append(entry)
        out.append(entry)
    cache.add(new)
    return [{k: e[k] for k in PUBLIC} for e in out]


PUBLIC = ("version", "time", "rows", "serving", "change")
CACHED = (*PUBLIC, "events", "models", "stamp", "after", "format")  # what an entry of the cache must hold


def _entry(v: dict[str, Any], when: dt.datetime, before: dict[str, Any] | None, snapshot: Any, lance_ds: Any) -> dict[str, Any]:
    """The entry of one listed version, from its metadata and the entry of the version listed before it."""
    snapshot.checkout(v["version"])
    raw = (snapshot.schema.field("vector").metadata or {}).get(META_KEY.encode())
    meta = GalleryMeta.from_json(raw.decode()) if raw else None
    rows = int(v.get("metadata", {}).get("total_rows", -1))
    events = len(meta.history) if meta else 0
    models = sorted(meta.versions) if meta else []
    operation = _operation(lance_ds, int(v["version"])) if before is not None else ""
    if before is None:
        change = "table created" if int(v["version"]) == 1 else "oldest kept version"
    elif operation in (RESTORE, UNREAD):  # a restore brings back any rows, events and models: named by its transaction
        change = operation
    elif events > before["events"] and meta is not None:
        change = describe_event(meta.history[-1])
    elif rows != before["rows"]:
        change = f"rows {rows - before['rows']:+d}"
    elif set(models) - set(before["models"]):
        change = f"{', '.join(sorted(set(models) - set(before['models'])))} registered for the rows it writes"
    else:
        change = operation
    return {
        "version": int(v["version"]),
        "time": when.isoformat(timespec="seconds"),
        "rows": rows,
        "serving": meta.serving.id if meta else None,
        "change": change,
        "events": events,
        "models": models,
        "stamp": when.isoformat(),
        "after": before["version"] if before else None,
        "format": FORMAT,
    }


FORMAT = 4  # of a cached entry: entries of another format (other labels) are worked out again


def describe_event(event: dict[str, Any]) -> str:
    """A gallery event as a person reads it (`index history` and `index info`)."""
    name = str(event.get("event"))
    if name == "create":
        return f"created with {event.get('model')}"
    if name == "upgrade":
        return f"upgrade from {event.get('previous')} to {event.get('model')}" + (" (gate passed)" if event.get("gate") else "")
    if name == "rollback":
        return f"rollback to version {event.get('to')}"
    return name


HISTORY_CACHE = "history-cache.jsonl"


class HistoryCache:
    """Entries of past versions, one JSON line each, appended by whoever reads the history.

    Each line names the version, its commit time and the version it follows, so a line whose
    version was pruned, reused by a table made anew, or worked out before its predecessor was
    pruned is simply not used; a torn or foreign line is skipped. Losing the file, or failing to
    write it, costs time, never data.
    """

    def __init__(self, gallery_path: Path) -> None:
        self.file = gallery_path / HISTORY_CACHE

    def load(self) -> dict[int, dict[str, Any]]:
        known: dict[int, dict[str, Any]] = {}
        try:
            lines = self.file.read_bytes().decode("utf-8", errors="replace").splitlines()
        except OSError as exc:
            if not isinstance(exc, FileNotFoundError):
                log.info("history cache %s unreadable: rebuilt from the table", self.file, exc_info=True)
            return known
        for line in lines:
            try:
                entry = json.loads(line)
                if entry["format"] == FORMAT:
                    known[int(entry["version"])] = {k: entry[k] for k in CACHED}
            except (ValueError, KeyError, TypeError):
                continue
        return known

    def add(self, entries: list[dict[str, Any]]) -> None:
        """Append in one write (O_APPEND: concurrent readers' lines do not interleave)."""
        if not entries:
            return
        data = "".join(json.dumps(e) + "\n" for e in entries).encode()
        try:
            fd = os.open(self.file, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                if os.lseek(fd, 0, os.SEEK_END) and (os.lseek(fd, -1, os.SEEK_END), os.read(fd, 1))[1] != b"\n":
                    data = b"\n" + data  # a writer killed mid-line: start a line of our own
                os.write(fd, data)  # O_APPEND: at the end, wherever the read left the offset
            finally:
                os.close(fd)
        except OSError:  # read-only folder, full disk: the next reader works them out again
            log.info("history cache %s not written", self.file, exc_info=True)


MAINTENANCE = "table maintenance"  # compaction and index upkeep: rows and vectors as they were
RESTORE = "earlier version restored"
INDEX_BUILT = "index built"
OPERATIONS = {
    "Update": REWRITE,
    "CreateIndex": INDEX_BUILT,
    "Merge": "column added",
    "Project": "columns changed",
    "Rewrite": MAINTENANCE,
    "BaseOperation": MAINTENANCE,
    "UpdateConfig": "metadata changed",
    "Restore": RESTORE,
}
FOLDED = (MAINTENANCE, INDEX_BUILT)  # what a backfill's periodic compaction commits between its batches


UNREAD = "table rewritten (its transaction could not be read)"


def _operation(ds: Any, version: int) -> str:
    """What a version with the same rows and metadata did, from its Lance transaction."""
    try:
        tx = ds.read_transaction(version)
    except TypeError:  # pylance cannot rebuild a compaction's RewrittenIndex operation, on any read
        return MAINTENANCE
    except Exception:  # noqa: BLE001  # anything else (too many open files...) may pass: not cached
        log.warning("history: cannot read the transaction of table version %d", version, exc_info=True)
        return UNREAD
    name = type(tx.operation).__name__ if tx is not None else ""
    return OPERATIONS.get(name, f"table rewritten ({name or 'unknown'})")


def grouped(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a person asks of the history: a backfill's batches under one serving model, with the
    compactions and id-index updates it ran between them, as one entry naming its first and last version and its batch
    count; a restore and the rollback event that follows it as one; other entries as they are."""
    out: list[dict[str, Any]] = []
    held: list[dict[str, Any]] = []  # maintenance after a run's batch: the run's if another batch of it follows
    for e in entries:
        run = out[-1] if out and out[-1].get("batches") else None
        if e["change"] in FOLDED and run is not None:
            held.append(e)
            continue
        if e["change"] == REWRITE and run is not None and run["serving"] == e["serving"]:
            held.clear()
        else:
            out.extend(dict(h) for h in held)
            held.clear()
            if e["change"] != REWRITE:
                if e["change"].startswith("rollback to") and out and out[-1]["change"] == RESTORE:
                    out[-1] = {**e, "version": out[-1]["version"], "to_version": e["version"]}
                else:
                    out.append(dict(e))
                continue
            run = {**e, "batches": 0}
            out.append(run)
        run.update(to_version=e["version"], time=e["time"], rows=e["rows"], batches=run["batches"] + 1)
        run["change"] = f"backfill to {e['serving']}: {run['batches']} batch{'es' if run['batches'] > 1 else ''}"
    out.extend(dict(h) for h in held)
    return out


def rollback(gallery: Gallery, to: int) -> GalleryMeta:
    """Restore the rows, vectors and serving model of version `to` as a new version."""
    with gallery.writing("rollback"):
        versions = {int(v["version"]) for v in gallery.table.list_versions()}
        if to not in versions:
            gone = "; pruned versions are gone" if 1 <= to < min(versions) else ""
            raise CompatretError(f"no version {to} (have {min(versions)}..{max(versions)}{gone})")
        current = gallery.version
        retry_commit(lambda: gallery.table.restore(to), "rollback", gallery.table.checkout_latest)
        meta = gallery.with_event("rollback", to=to, from_version=current)
        gallery.set_meta(meta)
    return meta


def forget_versions(gallery: Gallery, older_than: dt.timedelta) -> None:
    """Delete versions older than `older_than`, nothing else (no compaction, so no new version:
    the latest, which a sharded gallery's snapshot names, stays). Files of an unfinished write
    by another process are kept (delete_unverified=False)."""
    with gallery.writing("prune"):
        gallery.dataset(gallery.latest_version()).cleanup_old_versions(older_than=older_than, delete_unverified=False)
        HistoryCache(gallery.path).file.unlink(missing_ok=True)  # its forgotten versions' lines would only grow it


def prune(gallery: Gallery, older_than: dt.timedelta) -> dict[str, int]:
    """Compact the table and delete versions older than `older_than` (the current one stays).

    Files of an unfinished write by another process are kept (delete_unverified=False).
    """
    with gallery.writing("prune"):
        before = len(gallery.table.list_versions())
        with warnings.catch_warnings():  # lancedb warns that 0 keeps the latest version only: what was asked
            warnings.filterwarnings("ignore", message=r"optimize\(cleanup_older_than=0\)")
            retry_commit(lambda: gallery.table.optimize(cleanup_older_than=older_than), "prune", gallery.table.checkout_latest)
        after = len(gallery.table.list_versions())
        HistoryCache(gallery.path).file.unlink(missing_ok=True)  # its pruned versions' lines would only grow it
    return {"versions_before": before, "versions_after": after}
