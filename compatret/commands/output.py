"""What every command shares: one `error:` line with exit code 2, and --json or text output.

Its own module so that command modules and cli.py import it without importing each other.
"""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable

import click

from compatret.errors import CompatretError


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a CompatretError (or a bad file) into one `error:` line and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CompatretError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except (OSError, ValueError) as exc:
            click.echo(f"error: {exc.__class__.__name__}: {exc}", err=True)
            sys.exit(2)

    return wrapper


def emit(obj: Any, as_json: bool, text: str) -> None:
    click.echo(json.dumps(obj) if as_json else text)
