"""Where things live: the data folder and the default index home, each behind one setting."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from compatret.core.errors import CompatretError


def data_dir() -> Path:
    """Folder of the shared data sets: $COMPATRET_DATA, else ../shared/data beside the checkout."""
    env = os.environ.get("COMPATRET_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def dataset(name: str) -> Path:
    """Path of one shared data set, with a clear error when it is missing."""
    path = data_dir() / name
    if not path.exists():
        raise CompatretError(f"data set {name!r} not found at {path} (set COMPATRET_DATA)")
    return path


def index_home() -> Path:
    """Default home of indexes made by the CLI: $COMPATRET_INDEXES, else ./indexes."""
    return Path(os.environ.get("COMPATRET_INDEXES", "indexes"))


def read_toml(path: str | Path, what: str = "recipe") -> dict[str, Any]:
    """A TOML file as a dict; a missing or malformed file is one CompatretError naming it."""
    p = Path(path)
    if not p.is_file():
        raise CompatretError(f"{what} {p} not found")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise CompatretError(f"{what} {p} is not valid TOML: {exc}") from None
