"""Ctrl-C during a long write: finish the batch in hand, then stop (what was committed is then known)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def stop_on_sigint() -> Iterator[threading.Event]:
    """Ctrl-C asks the loop to stop after the batch in hand (a second one interrupts at once).

    A KeyboardInterrupt raised inside a native LanceDB or pyarrow call comes back as some other
    error, so the first Ctrl-C only sets a flag the loop checks between batches. Outside the main
    thread (a server's backfill) signals cannot be caught, and the flag simply stays clear.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def on_sigint(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
