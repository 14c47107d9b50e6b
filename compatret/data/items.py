"""Read item and query files (JSONL, Parquet, plain text) into plain dicts, with one-line errors."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compatret.core.errors import CompatretError


def _jsonl_rows(path: Path) -> tuple[list[dict[str, Any]], list[int]]:
    """Every non-empty line as a JSON object, with its line number; a bad line is one error naming file and line."""
    rows, lines = [], []
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
            lines.append(n)
    return rows, lines


def text_or_none(value: Any) -> str | None:
    """A text field as a string; None for missing (and for the NaN a Parquet/pandas gap becomes)."""
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def normal_item(row: dict[str, Any]) -> dict[str, Any]:
    """One item as every path stores it (a local add, a Ray add, an HTTP add): id (a BEIR file's
    `_id` too), title and text as strings or None, the image as bytes (read from `image_path`),
    metadata an object (a Parquet `label` column becomes {"label": ...}). Idempotent."""
    image = row.get("image")
    if image is None and text_or_none(row.get("image_path")):
        try:
            image = Path(row["image_path"]).read_bytes()
        except OSError as exc:
            raise CompatretError(f"cannot read image {row['image_path']}: {exc.strerror}") from exc
    meta = row.get("metadata")
    if meta is None and row.get("label") is not None:
        meta = {"label": row["label"]}
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError:
            meta = None if not meta.strip() else meta
    if meta is not None and not isinstance(meta, dict):
        raise CompatretError(f"item {text_or_none(row.get('id', row.get('_id')))!r}: metadata must be an object")
    return {
        "id": text_or_none(row.get("id", row.get("_id"))),
        "title": text_or_none(row.get("title")),
        "text": text_or_none(row.get("text")),
        "image": bytes(image) if image is not None else None,
        "metadata": meta,
    }


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every non-empty line as a JSON object; a bad line is one error naming file and line."""
    return _jsonl_rows(path)[0]


def first_duplicate(ids: Sequence[str | None]) -> tuple[str, int, int] | None:
    """The first id given twice and both positions (0-based), ignoring missing ids: for an error
    that names the id and where it is, not only that there is one."""
    seen: dict[str, int] = {}
    for n, i in enumerate(ids):
        if i is None:
            continue
        if i in seen:
            return i, seen[i], n
        seen[i] = n
    return None


def duplicate_error(ids: Sequence[str | None], where: str = "item", positions: Sequence[int] | None = None) -> None:
    """Raise one error naming the first duplicated id and its two places (`positions`: e.g. line
    numbers; default: 1-based item numbers)."""
    dup = first_duplicate(ids)
    if dup is not None:
        i, a, b = dup
        at = positions or range(1, len(ids) + 1)
        raise CompatretError(f"duplicate id {i!r} in the input: {where}s {at[a]} and {at[b]}")


def has_content(item: dict[str, Any], modality: str) -> bool:
    """Whether an item holds something its gallery's model can embed: an image (or image path) for
    an image gallery, else a text or title that is not blank."""
    if modality == "image":
        return item.get("image") is not None or bool(item.get("image_path"))
    return any(isinstance(item.get(k), str) and item[k].strip() for k in ("text", "title"))


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise CompatretError(f"{path}: not a readable parquet file ({exc})") from exc
    return table.to_pylist()


EMPTY_LISTED = 20  # ids of empty items a report lists (the count is whole)


@dataclass
class ItemFile:
    """The items of a file to add, and those left out for having nothing to embed (their ids)."""

    items: list[dict[str, Any]]
    skipped_empty: list[str] = field(default_factory=list)


def read_items(path: str | Path, modality: str = "text", skip_empty: bool = False) -> ItemFile:
    """Items to add: JSONL objects or Parquet rows with id, text/title or image/image_path, metadata.

    An item with nothing to embed for a `modality` gallery (real corpora have a few empty
    documents) is refused, naming its line, unless `skip_empty` leaves it out (and lists it)."""
    p = Path(path)
    if not p.exists():
        raise CompatretError(f"no such file: {p}")
    if p.suffix == ".jsonl":
        rows, lines = _jsonl_rows(p)
        where = "line"
    elif p.suffix == ".parquet":
        rows = _read_parquet(p)
        lines, where = list(range(1, len(rows) + 1)), "row"
    else:
        raise CompatretError(f"{p}: items must be .jsonl or .parquet")
    if not rows:
        raise CompatretError(f"{p} holds no items")
    kept, kept_lines, skipped = [], [], []
    for row, n in zip(rows, lines):
        if row.get("metadata") is not None and not isinstance(row["metadata"], dict):
            raise CompatretError(f"{p}:{n}: metadata must be an object")
        try:
            row = normal_item(row)
        except CompatretError as exc:
            raise CompatretError(f"{p}:{n}: {exc}") from exc
        if has_content(row, modality):
            kept.append(row)
            kept_lines.append(n)
        elif skip_empty:
            skipped.append(str(row["id"]) if row.get("id") is not None else f"{where} {n}")
        else:
            empty = sum(not has_content(r, modality) for r in rows)
            raise CompatretError(
                f"{p}:{n}: item {row.get('id', '')!r} has no {'image' if modality == 'image' else 'text'} "
                f"({empty} such item{'s' if empty > 1 else ''} in the file; --skip-empty leaves them out)"
            )
    duplicate_error([str(r["id"]) if r.get("id") is not None else None for r in kept], where, kept_lines)
    if not kept:
        raise CompatretError(f"{p}: all {len(rows)} items are empty: nothing to add")
    return ItemFile(kept, skipped)


def read_queries(path: str | Path) -> list[Any]:
    """Queries: a .txt file (one per line), JSONL ({"text"} or {"image_path"}) or Parquet (image)."""
    return [q for _, q in read_query_rows(path)]


def read_query_rows(path: str | Path) -> list[tuple[str | None, Any]]:
    """Queries with their ids (`_id` or `id` in JSONL / Parquet; None in .txt), so that results
    can say which query they answer."""
    p = Path(path)
    if not p.exists():
        raise CompatretError(f"no such file: {p}")
    if p.suffix == ".txt":
        queries: list[tuple[str | None, Any]] = [(None, line.rstrip("\n")) for line in p.open() if line.strip()]
    elif p.suffix in (".jsonl", ".parquet"):
        rows = read_jsonl(p) if p.suffix == ".jsonl" else _read_parquet(p)
        queries = []
        for n, row in enumerate(rows, 1):
            qid = row.get("_id", row.get("id"))
            qid = None if qid is None else str(qid)
            if row.get("text") is not None:
                queries.append((qid, row["text"]))
            elif row.get("image") is not None:
                queries.append((qid, bytes(row["image"])))
            elif row.get("image_path") is not None:
                queries.append((qid, Path(row["image_path"]).read_bytes()))
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
