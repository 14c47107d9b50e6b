"""One gallery across several shard galleries, published as one through the snapshot log.

`ShardedService` answers what `Service` answers (add, delete, query, upgrade, rollback,
history, info), so the CLI and the Python API open either the same way (`open_gallery`).
Every write runs under the root's writer lock: it records what it is about to do (the
intent file), commits on the shards, then appends one snapshot; the intent goes last. A
crash before the append leaves the previous snapshot serving and the intent behind: the
same command run again finishes the job, any other write is refused until it has (or
until `rollback` puts every shard back at a snapshot).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from compatret.core.errors import CompatretError
from compatret.engine.backfill import BackfillReport, backfill
from compatret.engine.models import lineage
from compatret.engine.ray_cluster import RayOptions
from compatret.engine.results import QueryResult, merge_top_k
from compatret.engine.service import Service
from compatret.engine.upgrade import upgrade_gallery
from compatret.store.gallery import Gallery
from compatret.store.history import forget_versions
from compatret.store.history import rollback as rollback_shard
from compatret.store.intent import Intent
from compatret.store.meta import GalleryMeta
from compatret.store.snapshots import HASH, Snapshot, SnapshotLog, shard_of
from compatret.store.writer_lock import writer_lock


def shard_dir(root: Path, i: int) -> Path:
    return root / f"shard-{i:03d}"


def is_sharded(path: str | Path) -> bool:
    return SnapshotLog.exists(path)


def open_gallery(path: str | Path, kernel: str = "auto", refresh_seconds: float = 0.0) -> Service | ShardedService:
    """A gallery or a sharded gallery, whichever lives at `path`."""
    if is_sharded(path):
        return ShardedService.open(path, kernel, refresh_seconds)
    return Service.open(path, kernel, refresh_seconds)


def _key(*parts: Any) -> str:
    """What identifies one write's arguments: its rerun must be the same write."""
    h = hashlib.blake2b(digest_size=12)
    for p in parts:
        h.update(p.tobytes() if isinstance(p, np.ndarray) else json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()


class ShardedService:
    """N shard galleries and the snapshot log that says which versions of them are published."""

    def __init__(self, root: Path, shards: list[Service], log: SnapshotLog) -> None:
        self.root = root
        self.shards = shards
        self.log = log
        self.intent = Intent(root)
        self._key = ""  # the running write's intent key (see _writing)

    # ---- lifecycle -------------------------------------------------------------------
    @staticmethod
    def create(path: str | Path, shards: int, **create: Any) -> ShardedService:
        """A new, empty sharded gallery: `create` are `Service.create`'s arguments, for every shard."""
        root = Path(path)
        if shards < 1:
            raise CompatretError(f"--shards must be at least 1, got {shards}")
        if is_sharded(root) or Gallery.exists(root) or (root.exists() and any(root.iterdir())):
            raise CompatretError(f"{root} is not empty: a sharded gallery needs a folder of its own")
        existed = root.exists()
        root.mkdir(parents=True, exist_ok=True)
        gallery_id = uuid.uuid4().hex
        try:
            with writer_lock(root, "index create"):
                made = []
                for i in range(shards):
                    s = Service.create(shard_dir(root, i), **create)
                    with s.gallery.writing("index create"):  # the shard says whose shard it is: a folder from elsewhere is refused
                        s.gallery.set_meta(s.gallery.with_event("shard", gallery=gallery_id, index=i, of=shards))
                    made.append(s)
                log = SnapshotLog(root)
                versions = [s.gallery.latest_version() for s in made]
                fields = dict(gallery=gallery_id, shards=shards, hash=HASH, versions=versions, rows=0, serving=made[0].meta.serving.id)
                log.append(None, None, event="create", details={}, **fields)
        except BaseException:  # bad arguments, or a failure midway: no half-made gallery is left behind
            for p in list(root.iterdir()) if root.exists() else []:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            if not existed:
                root.rmdir()
            raise
        return ShardedService(root, made, log)

    @staticmethod
    def open(path: str | Path, kernel: str = "auto", refresh_seconds: float = 0.0) -> ShardedService:
        root = Path(path)
        log = SnapshotLog(root)
        snap = log.latest()
        shards = []
        for i in range(snap.shards):
            folder = shard_dir(root, i)
            if not Gallery.exists(folder):
                raise CompatretError(f"shard {i} of {root} is missing ({folder} holds no gallery)")
            s = Service.open(folder, kernel, refresh_seconds)
            mark = next((e for e in s.meta.history if e.get("event") == "shard"), {})
            if mark.get("gallery") != snap.gallery or mark.get("index") != i:
                raise CompatretError(f"{folder} is not shard {i} of this gallery (it belongs to another sharded gallery)")
            shards.append(s)
        return ShardedService(root, shards, log)

    # ---- what is published -----------------------------------------------------------
    @property
    def snapshot(self) -> Snapshot:
        return self.log.latest()

    @property
    def meta(self) -> GalleryMeta:
        """The published metadata (every shard serves the same model at a snapshot)."""
        return self.shards[0].gallery.meta_at(self.snapshot.versions[0])

    def _ahead(self, snap: Snapshot) -> list[int]:
        """The shards whose table moved past the version `snap` names."""
        return [i for i, s in enumerate(self.shards) if s.gallery.latest_version() != snap.versions[i]]

    @contextmanager
    def _writing(self, command: str, key: str) -> Iterator[Snapshot]:
        """The frame of every write: the root's lock, the intent, and the snapshots that publish it.

        A CompatretError raised after some shard committed (bad input found on a later shard) puts
        those shards back and publishes that, so a refused write changes no row; an interruption
        (Ctrl-C, a kill) leaves the intent for the same command to finish."""
        with writer_lock(self.root, command):
            snap = self.log.all()[-1]  # read afresh under the lock, never from a reader's cache
            intent = self.intent.read()
            if intent is not None and snap.details.get("intent") == intent["key"] and not self._ahead(snap):
                self.intent.clear()  # that write was published; only its intent was left behind
                intent = None
            if intent is not None and (intent["command"], intent["key"]) != (command, key):
                raise CompatretError(
                    f"an interrupted `{intent['command']}` left shards ahead of snapshot {snap.snapshot}: run it again to "
                    f"finish it, or `compatret index rollback {self.root} --to {snap.snapshot}`"
                )
            resumed = intent is not None
            if not resumed:
                ahead = self._ahead(snap)
                if ahead:
                    raise CompatretError(
                        f"shard {ahead[0]} changed outside this sharded gallery (its table is past snapshot {snap.snapshot}): "
                        f"`compatret index rollback {self.root} --to {snap.snapshot}` restores it"
                    )
                self.intent.write(command, key, snap.snapshot)
            self._key = key
            try:
                yield snap
            except BaseException as exc:
                published = self.log.all()[-1]
                moved = self._ahead(published)
                if moved and isinstance(exc, CompatretError) and not resumed:
                    for i in moved:
                        rollback_shard(self.shards[i].gallery, published.versions[i])
                    self._publish(published, "undone", command=command, error=str(exc).splitlines()[0])
                    moved = []
                if not moved:  # nothing half-done: nothing for a rerun to finish
                    self.intent.clear()
                raise
            self.intent.clear()

    def _publish(self, snap: Snapshot, event: str, **details: Any) -> Snapshot:
        """Append the snapshot naming every shard's latest version; it carries the write's intent key,
        so a crash between this append and the intent's removal is seen as finished."""
        versions = [s.gallery.latest_version() for s in self.shards]
        rows = sum(s.gallery.count() for s in self.shards)
        return self.log.append(
            snap,
            snap,
            event=event,
            versions=versions,
            rows=rows,
            serving=self.shards[0].meta.serving.id,
            details={**details, "intent": self._key},
        )

    def _split(self, ids: Sequence[str]) -> list[np.ndarray]:
        """Positions of `ids` per shard, in their order."""
        where = np.array([shard_of(str(i), len(self.shards)) for i in ids], dtype=np.int64)
        return [np.flatnonzero(where == i) for i in range(len(self.shards))]

    # ---- writes ----------------------------------------------------------------------
    def add_items(self, items: Sequence[dict[str, Any]], batch_size: int = 256, progress: bool = True, **_: Any) -> int:
        """Embed and store items on their shards, then publish them at once; items need ids."""
        ids = [it.get("id", it.get("_id")) for it in items]
        if any(i is None for i in ids):
            raise CompatretError("items of a sharded gallery need ids (the id picks the shard)")
        added = 0
        with self._writing("index add", _key(ids)) as snap:
            for s, where in zip(self.shards, self._split([str(i) for i in ids])):
                if len(where):
                    added += s.add_items([items[j] for j in where], batch_size, progress)
            self._publish(snap, "add", rows=added)
        return added

    def add_vectors(
        self, vectors: np.ndarray, ids: Sequence[str] | np.ndarray | None = None, model: str | None = None, **options: Any
    ) -> int:
        """Store precomputed vectors on their shards, then publish. Rows without ids are named by a
        digest of all the vectors and their place (`<digest>-<n>`), so a rerun of an interrupted add
        names them alike and finishes it (adding the same vectors again stores nothing new)."""
        vectors = np.asarray(vectors)
        if ids is None:
            named = _key(np.ascontiguousarray(vectors), model)
            id_list = [f"{named}-{n}" for n in range(len(vectors))]
        else:
            id_list = [str(i) for i in ids]
        if len(id_list) != len(vectors):
            raise CompatretError(f"{len(id_list)} ids for {len(vectors)} vectors")
        added = 0
        with self._writing("index add", _key(id_list, model)) as snap:
            for s, where in zip(self.shards, self._split(id_list)):
                if len(where):
                    added += s.add_vectors(vectors[where], [id_list[j] for j in where], model, **options)
            self._publish(snap, "add", rows=added)
        return added

    def add_items_on_ray(self, path: str, options: RayOptions, progress: bool = True, skip_empty: bool = False) -> dict[str, Any]:
        """`index add --items F --engine ray`: each shard takes the items its ids land on, encoded
        by the cluster's workers; one snapshot publishes them all. Resumable as on one gallery."""
        from compatret.engine.ray_ingest import ingest_items

        n = len(self.shards)
        with self._writing("index add", _key(str(Path(path).resolve()), "ray")) as snap:
            reports = [
                ingest_items(s.gallery, s.source_of_serving(), path, options, progress, skip_empty, shard=(i, n))
                for i, s in enumerate(self.shards)
            ]
            added = sum(r["added"] for r in reports)
            self._publish(snap, "add", rows=added)
        empty = reports[0]["skipped_empty_ids"]  # every shard pass sees every item: the first says them all
        return {**reports[0], "added": added, "skipped": sum(r["skipped"] for r in reports), "skipped_empty_ids": empty}

    def delete(self, ids: Sequence[str]) -> int:
        """Delete rows by id on their shards, then publish: once this returns, no reader serves them."""
        ids = list(dict.fromkeys(str(i) for i in ids))
        with self._writing("index delete", _key(ids)) as snap:
            published = set(self.existing(ids, snap))
            unknown = [i for i in ids if i not in published]
            if unknown:
                raise CompatretError(f"{len(unknown)} ids not in the gallery, e.g. {unknown[0]!r}")
            for s, part in zip(self.shards, self._parts(ids)):
                s.gallery.latest_version()
                still = s.gallery.existing(part)  # a rerun: what the interrupted run deleted is gone already
                if still:
                    s.delete(still)
            self._publish(snap, "delete", rows=len(ids))
        return len(ids)

    def upgrade(self, model: str, gate: dict[str, Any] | None = None) -> GalleryMeta:
        """Check every shard, upgrade each (O(1)), then publish the new serving model on all at once."""
        with self._writing("index upgrade", _key(model)) as snap:
            todo = [s for s, v in zip(self.shards, snap.versions) if s.gallery.latest_version() == v]  # a rerun skips the done
            for s in todo:
                upgrade_gallery(s.gallery, model, gate, check_only=True)
            for s in todo:
                s.upgrade(model, gate)
            self._publish(snap, "upgrade", model=self.shards[0].meta.serving.id, previous=snap.serving)
        return self.meta

    def rollback(self, to: int) -> Snapshot:
        """Put every shard back at the versions snapshot `to` names, as a new snapshot (an
        unfinished write's leftovers go with it)."""
        with writer_lock(self.root, "index rollback"):
            self._key = ""
            target = self.log.get(to)
            snap = self.log.all()[-1]
            for i, (s, v) in enumerate(zip(self.shards, target.versions)):
                have = {int(x["version"]) for x in s.gallery.table.list_versions()}
                if v not in have:
                    raise CompatretError(f"snapshot {to} names version {v} of shard {i}, which was pruned: nothing changed")
            for s, v in zip(self.shards, target.versions):
                rollback_shard(s.gallery, v)
            new = self._publish(snap, "rollback", to=to, from_snapshot=snap.snapshot)
            self.intent.clear()
        return new

    def prune(self, older_than: dt.timedelta) -> dict[str, Any]:
        """Compact every shard and publish that, then forget each shard's versions older than
        `older_than` (never one the newest snapshot names); older snapshots naming forgotten
        versions can no longer be rolled back to."""
        before = [len(s.gallery.table.list_versions()) for s in self.shards]
        with self._writing("index prune", _key("prune", older_than.total_seconds())) as snap:
            for s in self.shards:
                with s.gallery.writing("prune"):
                    s.gallery.compact()
            self._publish(snap, "prune")
            for s in self.shards:
                forget_versions(s.gallery, older_than)
        after = [len(s.gallery.table.list_versions()) for s in self.shards]
        return {"versions_before": sum(before), "versions_after": sum(after), "shards": [list(p) for p in zip(before, after)]}

    def backfill(
        self,
        limit: int | None = None,
        fraction: float | None = None,
        order: str = "auto",
        batch_size: int = 64,
        progress: bool = True,
        should_stop: Callable[[], bool] | None = None,
        ray: RayOptions | None = None,
    ) -> BackfillReport:
        """Re-embed each shard's pending rows in turn, publishing a snapshot after each shard (rows of
        either model are right for the serving model, so a shard done is worth serving at once)."""
        done = remaining = skipped = 0
        seconds, stopped = 0.0, False
        with self._writing("index backfill", _key(self.meta.serving.id)) as snap:  # any backfill to this model resumes another
            for s in self.shards:
                left = None if limit is None else max(limit - done, 0)
                report = backfill(s, left, fraction, order, batch_size, progress, ray=ray, should_stop=should_stop) if left != 0 else None
                if report is not None:
                    done, seconds, skipped = done + report.done, seconds + report.seconds, skipped + report.skipped
                    remaining, stopped = remaining + report.remaining, report.stopped
                else:
                    remaining += sum(n for v, n in s.rows_by_version().items() if v != s.meta.serving.id)
                if s.gallery.latest_version() != snap.versions[self.shards.index(s)]:
                    snap = self._publish(snap, "backfill", rows=done)
                if stopped:
                    break
        return BackfillReport(done, remaining, seconds, stopped, self.meta.serving.id, skipped)

    # ---- reads -----------------------------------------------------------------------
    def existing(self, ids: Sequence[str], snap: Snapshot | None = None) -> list[str]:
        """Which of `ids` the published snapshot (or `snap`) holds."""
        snap = snap or self.snapshot
        return [i for s, part, v in zip(self.shards, self._parts(ids), snap.versions) for i in s.gallery.addresses_of(part, version=v)]

    def _parts(self, ids: Sequence[str]) -> list[list[str]]:
        """`ids` split by the shard that holds them."""
        return [[ids[j] for j in where] for where in self._split(ids)]

    def count(self) -> int:
        """Rows in the published snapshot."""
        return self.snapshot.rows

    def query(
        self,
        texts: Sequence[str] | None = None,
        images: Sequence[Any] | None = None,
        vectors: np.ndarray | None = None,
        model: str | None = None,
        k: int = 10,
        include_payload: bool = False,
    ) -> list[QueryResult]:
        """Top-k from one published snapshot: queries embedded once, every shard searched at the
        version the snapshot names, the hits merged by score."""
        if k < 1:
            raise CompatretError(f"k must be >= 1, got {k}")
        for attempt in range(2):
            snap = self.snapshot
            try:
                q = self.shards[0].embed_queries(texts, images, vectors, model, at_version=snap.versions[0])
                parts = self.search_shards(q, model, k, include_payload, snap)
                return [merge_top_k([p[n] for p in parts], k, snap.snapshot) for n in range(len(q))]
            except (OSError, ValueError):  # a version of this snapshot was pruned under the query: a newer one names others
                if attempt or self.log.all()[-1].snapshot == snap.snapshot:
                    raise
        raise AssertionError("unreachable")

    def search_shards(self, q: np.ndarray, model: str | None, k: int, include_payload: bool, snap: Snapshot) -> list[list[QueryResult]]:
        """Each shard's top-k at its snapshot version (in this process; Ray Serve fans out instead)."""
        return [
            s.query(vectors=q, model=model, k=k, include_payload=include_payload, at_version=v) for s, v in zip(self.shards, snap.versions)
        ]

    lineage = staticmethod(lineage)

    def rows_by_version(self) -> dict[str, int]:
        """Rows per model version in the published snapshot (each shard's view at its version)."""
        out: dict[str, int] = {}
        for s, version in zip(self.shards, self.snapshot.versions):
            for v, n in s.view_at(version).counts().items():
                out[v] = out.get(v, 0) + n
        return dict(sorted(out.items()))

    def history(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.log.all()]
