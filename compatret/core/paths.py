"""Paths a gallery or model folder names, kept inside it."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from compatret.core.errors import CompatretError


def confined(base: str | Path, relative: str, what: str) -> Path:
    """`base / relative`, refusing a path that leaves `base`: absolute, `..`, or a symlink out.

    Records (encoder.json, version records) come from folders a user may not have written;
    a path in them must never name a file elsewhere on the machine.
    """
    rel = PurePosixPath(str(relative))
    if not str(relative) or rel.is_absolute() or Path(str(relative)).is_absolute() or ".." in rel.parts:
        raise CompatretError(f"{what} {relative!r} must be a relative path inside its folder")
    root = Path(base).resolve()
    target = (root / rel).resolve()
    if target != root and root not in target.parents:
        raise CompatretError(f"{what} {relative!r} leads out of its folder")
    return target
