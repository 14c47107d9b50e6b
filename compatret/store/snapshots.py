"""The snapshot log of a sharded gallery: which shard versions together make one published state.

A sharded gallery is N shard galleries (each a full gallery: table, writer lock, search view,
lineage) plus this append-only Lance table. A write commits on the shards it touches, then
appends one row here naming every shard's table version; readers answer from the newest row,
each shard read at the version that row names. So a crash between shard commits and the
snapshot commit leaves the previous snapshot serving, and one append is what makes a change
visible on every shard at once. Rows go to shards by `shard_of` (the hash is named in every
row, so a reader never guesses it).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from compatret.core.errors import CompatretError

LOG_DIR = "snapshots.lance"
RACY_NS = 2_000_000_000  # a log changed this recently may change again within one mtime tick (2 s on coarse file systems): read it again
HASH = "blake2b-64"  # the first 8 bytes of BLAKE2b of the id's UTF-8, big-endian, modulo the shard count
SCHEMA = pa.schema(
    [
        pa.field("snapshot", pa.int64()),
        pa.field("gallery", pa.string()),
        pa.field("shards", pa.int32()),
        pa.field("hash", pa.string()),
        pa.field("versions", pa.list_(pa.int64())),
        pa.field("serving", pa.string()),
        pa.field("rows", pa.int64()),
        pa.field("event", pa.string()),
        pa.field("details", pa.string()),
        pa.field("time", pa.string()),
    ]
)


def shard_of(row_id: str, shards: int) -> int:
    """The shard a row lives on: stable across processes, machines and Python versions."""
    return int.from_bytes(hashlib.blake2b(row_id.encode("utf-8"), digest_size=8).digest(), "big") % shards


@dataclass(frozen=True)
class Snapshot:
    """One published state: shard i is read at table version `versions[i]`."""

    snapshot: int
    gallery: str
    shards: int
    hash: str
    versions: tuple[int, ...]
    serving: str
    rows: int
    event: str
    details: dict[str, Any] = field(default_factory=dict)
    time: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "snapshot": self.snapshot,
            "time": self.time,
            "event": self.event,
            "serving": self.serving,
            "rows": self.rows,
            "versions": list(self.versions),
            **({"details": self.details} if self.details else {}),
        }


def _snapshot(row: dict[str, Any]) -> Snapshot:
    return Snapshot(
        snapshot=int(row["snapshot"]),
        gallery=str(row["gallery"]),
        shards=int(row["shards"]),
        hash=str(row["hash"]),
        versions=tuple(int(v) for v in row["versions"]),
        serving=str(row["serving"]),
        rows=int(row["rows"]),
        event=str(row["event"]),
        details=json.loads(row["details"] or "{}"),
        time=str(row["time"]),
    )


class SnapshotLog:
    """The append-only log; its writer holds the sharded gallery's writer lock."""

    def __init__(self, root: Path) -> None:
        self.uri = str(root / LOG_DIR)
        self._latest: tuple[tuple[int, int], Snapshot] | None = None  # the newest, and the log's change mark it was read at

    @staticmethod
    def exists(root: str | Path) -> bool:
        return (Path(root) / LOG_DIR).exists()

    def all(self) -> list[Snapshot]:
        """Every snapshot, oldest first."""
        import lance

        if not Path(self.uri).exists():
            raise CompatretError(f"no snapshot log at {self.uri}")
        rows = lance.dataset(self.uri).to_table().to_pylist()
        return sorted((_snapshot(r) for r in rows), key=lambda s: s.snapshot)

    def latest(self) -> Snapshot:
        """The newest snapshot: what every reader answers from. Read again only when the log changed
        (every append adds a manifest to `_versions/`, which moves the folder's mtime); a mark younger
        than the file system's timestamp granularity is not trusted (two appends in one tick)."""
        import time

        try:
            st = os.stat(Path(self.uri) / "_versions")
        except OSError:
            return self.all()[-1]  # its own one-line error
        mark = (st.st_mtime_ns, st.st_ino)
        if self._latest is not None and self._latest[0] == mark:
            return self._latest[1]
        newest = self.all()[-1]
        settled = time.time_ns() - st.st_mtime_ns > RACY_NS
        self._latest = (mark, newest) if settled else None
        return newest

    def get(self, number: int) -> Snapshot:
        found = [s for s in self.all() if s.snapshot == number]
        if not found:
            have = self.all()
            raise CompatretError(f"no snapshot {number} (have {have[0].snapshot}..{have[-1].snapshot})")
        return found[0]

    def append(self, previous: Snapshot | None, base: Snapshot | None, **changes: Any) -> Snapshot:
        """Publish a new state: `base` (or the given fields) with the changes, numbered after `previous`."""
        import lance

        fields: dict[str, Any] = {**(base.__dict__ if base is not None else {}), **changes}
        fields["snapshot"] = 0 if previous is None else previous.snapshot + 1
        fields["time"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        new = Snapshot(**{**fields, "versions": tuple(fields["versions"])})
        row = {**new.__dict__, "versions": list(new.versions), "details": json.dumps(new.details)}
        lance.write_dataset(pa.Table.from_pylist([row], schema=SCHEMA), self.uri, mode="create" if previous is None else "append")
        return new
