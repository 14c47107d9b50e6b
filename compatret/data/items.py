"""Read item and query files (JSONL, Parquet, plain text) into plain dicts, with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from compatret.errors import CompatretError

def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every non-empty line as a JSON object; a bad line is one error naming file and line."""
    rows = []
    with path.open() as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CompatretError(f"{path}:{n}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise CompatretError(f"{path}:{n}: each line must be a JSON object")
            rows.append(row)
    return rows


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise CompatretError(f"{path}: not a readable parquet file ({exc})") from exc
    rows = table.to_pylist()
    for row in rows:
        if "label" in row and "metadata" not in row:
            row["metadata"] = {"label": row.pop("label")}
    return rows


def read_items(path: str | Path) -> list[dict[str, Any]]:
    """Items to add: JSONL objects or Parquet rows with id, text/title or image/image_path, metadata."""
    p = Path(path)
    if not p.exists():
        raise CompatretError(f"no such file: {p}")
    if p.suffix == ".jsonl":
        rows = read_jsonl(p)
    elif p.suffix == ".parquet":
        rows = _read_parquet(p)
    else:
        raise CompatretError(f"{p}: items must be .jsonl or .parquet")
    if not rows:
        raise CompatretError(f"{p} holds no items")
    for n, row in enumerate(rows, 1):
        if row.get("_id") is not None and row.get("id") is None:  # BEIR corpus files
            row["id"] = row.pop("_id")
        if not any(row.get(k) is not None for k in ("text", "title", "image", "image_path")):
            raise CompatretError(f"{p}: item {n} has none of text, title, image, image_path")
        if row.get("metadata") is not None and not isinstance(row["metadata"], dict):
            raise CompatretError(f"{p}: item {n}: metadata must be an object")
    return rows


def read_queries(path: str | Path) -> list[Any]:
    """Queries: a .txt file (one per line), JSONL ({"text"} or {"image_path"}) or Parquet (image)."""
    p = Path(path)
    if not p.exists():
        raise CompatretError(f"no such file: {p}")
    if p.suffix == ".txt":
        queries: list[Any] = [line.rstrip("\n") for line in p.open() if line.strip()]
    elif p.suffix in (".jsonl", ".parquet"):
        rows = read_jsonl(p) if p.suffix == ".jsonl" else _read_parquet(p)
        queries = []
        for n, row in enumerate(rows, 1):
            if row.get("text") is not None:
                queries.append(row["text"])
            elif row.get("image") is not None:
                queries.append(bytes(row["image"]))
            elif row.get("image_path") is not None:
                queries.append(Path(row["image_path"]).read_bytes())
            else:
                raise CompatretError(f"{p}: query {n} has no text, image or image_path")
    else:
        raise CompatretError(f"{p}: queries must be .txt, .jsonl or .parquet")
    if not queries:
        raise CompatretError(f"{p} holds no queries")
    return queries


def read_array(path: str | Path, what: str) -> np.ndarray:
    """A .npy file, memory-mapped (a 10M-row file costs no memory until read), with a one-line
    error when it is missing or not an array."""
    p = Path(path)
    try:
        return np.load(p, allow_pickle=False, mmap_mode="r")
    except FileNotFoundError as exc:
        raise CompatretError(f"no such file: {p}") from exc
    except (ValueError, OSError) as exc:
        raise CompatretError(f"{p}: not a readable .npy array of {what} ({exc})") from exc


def read_vector_table(path: str | Path, vector_column: str = "vector") -> tuple[np.ndarray, list[str] | None]:
    """Vectors (and ids, when an `id` column exists) from a Parquet file exported by another store.

    The vector column may be a fixed-size or variable list of floats; ids are optional.
    """
    import pyarrow.parquet as pq

    p = Path(path)
    try:
        table = pq.read_table(p)
    except FileNotFoundError as exc:
        raise CompatretError(f"no such file: {p}") from exc
    except Exception as exc:  # noqa: BLE001  pyarrow raises several types for a bad file
        raise CompatretError(f"{p}: not a readable parquet file ({exc})") from exc
    if vector_column not in table.column_names:
        raise CompatretError(f"{p}: no {vector_column!r} column (has {', '.join(table.column_names)})")
    col = table.column(vector_column).combine_chunks()
    lengths = set(col.value_lengths().unique().to_pylist()) if hasattr(col, "value_lengths") else {col.type.list_size}
    if len(lengths) != 1 or None in lengths:
        raise CompatretError(f"{p}: column {vector_column!r} must hold vectors of one length, found {sorted(map(str, lengths))}")
    dim = lengths.pop()
    vectors = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
    ids = [str(i) for i in table.column("id").to_pylist()] if "id" in table.column_names else None
    return vectors, ids
