"""What every command shares: one `error:` line with exit code 2, and --json or text output.

Its own module so that command modules and cli.py import it without importing each other.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any, TextIO

import click

from compatret.core.errors import CompatretError

log = logging.getLogger(__name__)
_RESULTS: list[TextIO] = []  # where results go: stdout as it was when the command began


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a CompatretError (or a bad file) into one `error:` line and exit code 2, and keep
    stdout for results: whatever a library prints meanwhile (Ray's driver relays worker errors
    to stdout) goes to stderr, so `--json` output parses."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _RESULTS.append(sys.stdout)
        ray_before = _ray_running()
        try:
            with contextlib.redirect_stdout(sys.stderr):
                try:
                    return fn(*args, **kwargs)
                finally:
                    if not ray_before and _ray_running():  # this command started or joined Ray: leave it before stdout is back
                        import ray

                        ray.shutdown()
        except CompatretError as exc:
            click.echo(f"error: {exc}", err=True)
            log.debug("the error's traceback", exc_info=True)
            sys.exit(2)
        except (OSError, ValueError) as exc:
            click.echo(f"error: {exc.__class__.__name__}: {exc}", err=True)
            log.debug("the error's traceback", exc_info=True)
            sys.exit(2)
        finally:
            _RESULTS.pop()

    return wrapper


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and getattr(ray, "is_initialized", lambda: False)())


def say(text: str) -> None:
    """A line of a command's result, on stdout (never a library's stray print)."""
    click.echo(text, file=_RESULTS[-1] if _RESULTS else None)


def emit(obj: Any, as_json: bool, text: str) -> None:
    say(json.dumps(obj) if as_json else text)
