"""One writer per gallery, across processes and threads: a lock file in the gallery folder.

Every write (add, delete, upgrade, backfill batch, rollback, prune, compaction) runs inside
`writer_lock`. The lock is an OS file lock (filelock: flock on POSIX), so a writer killed
with -9 releases it the moment it dies. Beside it the holder writes who it is (pid,
command, since when), so a waiting writer can say whom it waits for. Readers never take it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from filelock import FileLock, Timeout
from lance.commit import CommitConflictError

from compatret.core.errors import CompatretError

LOCK_FILE = ".writer.lock"
HOLDER_FILE = ".writer.json"
DEFAULT_TIMEOUT_S = 60.0
CONFLICT_RETRIES = 5

T = TypeVar("T")

log = logging.getLogger(__name__)


def lock_timeout() -> float:
    """Seconds a writer waits for another: $COMPATRET_LOCK_TIMEOUT, else 60."""
    raw = os.environ.get("COMPATRET_LOCK_TIMEOUT")
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError as exc:
        raise CompatretError(f"COMPATRET_LOCK_TIMEOUT must be a number of seconds, got {raw!r}") from exc


def holder(gallery_dir: Path) -> dict[str, object] | None:
    """Who holds (or last held) the writer lock, as its holder wrote it."""
    try:
        return json.loads((gallery_dir / HOLDER_FILE).read_text())
    except (OSError, ValueError):
        return None


def _describe(info: dict[str, object] | None) -> str:
    if not info:
        return "another writer"
    return f"pid {info.get('pid')} ({info.get('command')}) since {info.get('since')}"


@contextmanager
def writer_lock(gallery_dir: Path, command: str, timeout: float | None = None) -> Iterator[None]:
    """Hold the gallery's writer lock for the duration of one write.

    A new FileLock object per call: two threads of one process exclude each other too.
    """
    timeout = lock_timeout() if timeout is None else timeout
    lock = FileLock(str(gallery_dir / LOCK_FILE), thread_local=False)
    deadline = time.monotonic() + timeout
    told = False
    while True:
        try:
            lock.acquire(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            break
        except Timeout:
            if time.monotonic() >= deadline:
                raise CompatretError(
                    f"gallery {gallery_dir} is being written by {_describe(holder(gallery_dir))}; "
                    f"gave up after {timeout:g} s (set COMPATRET_LOCK_TIMEOUT to wait longer)"
                ) from None
            if not told and sys.stderr.isatty():
                print(f"waiting for {_describe(holder(gallery_dir))} to finish writing {gallery_dir}", file=sys.stderr)
                told = True
    try:
        since = datetime.now(UTC).isoformat(timespec="seconds")
        info = {"pid": os.getpid(), "command": command, "since": since}
        (gallery_dir / HOLDER_FILE).write_text(json.dumps(info))
        yield
    finally:
        lock.release()


def retry_commit(fn: Callable[[], T], what: str, before_retry: Callable[[], None] | None = None) -> T:
    """Run one commit; retry it when Lance reports a conflict, then fail with one line.

    Conflicts should not happen under the writer lock, but a writer that ignores the lock
    (another tool on the same table) can still race us.
    """
    last: BaseException | None = None
    for attempt in range(CONFLICT_RETRIES):
        try:
            return fn()
        except CommitConflictError as exc:  # Lance's type for a commit that lost a race (retryable or not)
            last = exc
            log.info("%s: commit conflict (try %d of %d)", what, attempt + 1, CONFLICT_RETRIES, exc_info=True)
        time.sleep(0.05 * 2**attempt)
        if before_retry is not None:
            before_retry()
    first = str(last).strip().splitlines()[0] if str(last).strip() else type(last).__name__
    raise CompatretError(f"{what}: commit conflict with another writer after {CONFLICT_RETRIES} tries ({first})") from last
