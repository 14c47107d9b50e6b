"""The background backfill a server runs, seen alike by all its worker processes and after a restart.

The job holds a file lock in the gallery for as long as it runs (so a second start, from any
worker, is refused) and writes its last report or error next to it when it ends. A stop is a
file too, so a request to any worker reaches the one running the job.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from compatret.core.errors import CompatretError

JOB_LOCK = ".backfill-job.lock"
JOB_FILE = ".backfill-job.json"
STOP_FILE = ".backfill-job.stop"
PROBE_WAIT_S = 1.0  # `running()` holds the lock for microseconds to look: a start waits that out, a real job it does not

log = logging.getLogger(__name__)


class BackfillJob:
    """Start, and report on, the one background backfill of a gallery."""

    def __init__(self, gallery_dir: str | Path) -> None:
        self.dir = Path(gallery_dir)

    def _lock(self) -> FileLock:
        return FileLock(str(self.dir / JOB_LOCK), thread_local=False)

    def running(self, wait: float = 0.0) -> bool:
        """Whether a job holds the lock (any worker's; a dead worker's lock is freed by the OS).
        Another worker's probe holds it for an instant too: a caller that refuses something on
        True waits `PROBE_WAIT_S` that out; a status read may take the instant for a job."""
        lock = self._lock()
        try:
            lock.acquire(timeout=wait)
        except Timeout:
            return True
        lock.release()
        return False

    def request_stop(self) -> bool:
        """Ask the running job to stop after its batch in hand; False when none runs."""
        if not self.running():
            return False
        (self.dir / STOP_FILE).touch()
        return True

    def stop_requested(self) -> bool:
        return (self.dir / STOP_FILE).exists()

    def last(self) -> dict[str, Any]:
        """{"report": ..., "error": ...} of the last job that ended ({} before the first)."""
        try:
            return dict(json.loads((self.dir / JOB_FILE).read_text()))
        except (OSError, ValueError):
            return {}

    def start(self, run: Callable[[], dict[str, Any]]) -> bool:
        """Run `run` in a thread unless a job runs already (then False). Any exception it raises
        is recorded as the job's error, so a dead job still says why it died."""
        lock = self._lock()
        try:
            lock.acquire(timeout=PROBE_WAIT_S)
        except Timeout:
            return False
        (self.dir / STOP_FILE).unlink(missing_ok=True)  # a stop asked of an earlier job is not this one's

        def target() -> None:
            outcome: dict[str, Any] = {"report": None, "error": None}
            try:
                outcome["report"] = run()
            except CompatretError as exc:
                outcome["error"] = str(exc)
                log.info("backfill job refused: %s", exc, exc_info=True)
            except Exception as exc:  # noqa: BLE001  # a job thread must record any death, then end
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                outcome["error"] = f"{type(exc).__name__}: {first}"  # the line GET /backfill and the console show
                outcome["traceback"] = traceback.format_exc()  # the whole of it, kept in the job file and logged
                log.exception("backfill job failed")
            finally:
                outcome["ended"] = datetime.now(UTC).isoformat(timespec="seconds")
                tmp = self.dir / f".{JOB_FILE}.{os.getpid()}.tmp"
                tmp.write_text(json.dumps(outcome))
                os.replace(tmp, self.dir / JOB_FILE)
                (self.dir / STOP_FILE).unlink(missing_ok=True)
                lock.release()

        threading.Thread(target=target, daemon=True).start()
        return True
