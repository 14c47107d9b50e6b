"""compatret's logger: `compatret` and its children (one per module, `logging.getLogger(__name__)`).

Quiet by default (warnings and errors, on stderr); `--log-level` or `$COMPATRET_LOG` (debug,
info, warning, error) asks for more. At debug, a command's `error:` line is followed by the
traceback of what went wrong, and every failure compatret recovers from is logged with its own.
"""

from __future__ import annotations

import logging
import os
import sys

from compatret.core.errors import CompatretError

LOG_ENV = "COMPATRET_LOG"
LEVELS = ("debug", "info", "warning", "error")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str | None = None) -> str:
    """Send the `compatret` logger to stderr at `level` (default: $COMPATRET_LOG, else warning),
    once per process; returns the level set, so a server can hand it to its workers."""
    chosen = (level or os.environ.get(LOG_ENV) or "warning").lower()
    if chosen not in LEVELS:
        raise CompatretError(f"unknown log level {chosen!r} (from --log-level or ${LOG_ENV}): use one of {', '.join(LEVELS)}")
    logger = logging.getLogger("compatret")
    logger.setLevel(chosen.upper())
    if not any(getattr(h, "compatret", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.compatret = True  # type: ignore[attr-defined]  # marks the handler this function added
        logger.addHandler(handler)
    return chosen
