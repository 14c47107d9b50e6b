"""A mark file touched after every write, so servers in other processes read their writes at once."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

WRITTEN_MARK = ".written"  # touched after every write: servers read their writes (Service.index)


def announce_write(path: Path) -> None:
    """Tell readers of this gallery (other processes too) that a write ended: its mark gets a new
    nanosecond mtime, which needs no free space."""
    mark = path / WRITTEN_MARK
    try:
        mark.touch()
        now = time.time_ns()
        os.utime(mark, ns=(now, now))
    except OSError as exc:
        log.warning("%s: cannot mark a write for readers (%s): servers see it within --refresh-seconds", path, exc)


def written_mark(mark_file: str) -> tuple[int, int] | None:
    """What announce_write last left in `mark_file` (inode, mtime): a reader that saw another must
    read the latest version. Takes the file's path as a str: this runs once per query."""
    try:
        st = os.stat(mark_file)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns
