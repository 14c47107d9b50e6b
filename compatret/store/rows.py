"""Rows as Arrow: vectors, payloads, id filters, and committing a fragment replacement."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

ID_FILTER_MAX = 1024  # ids per `id IN (...)` filter


def vector_array(vectors: np.ndarray, dim: int) -> pa.Array:
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
    return pa.FixedSizeListArray.from_arrays(flat, dim)


PAYLOAD_COLUMNS = ("title", "text", "image", "metadata")


@dataclass(frozen=True)
class Payloads:
    """A batch's payload columns as the table stores them (metadata as JSON text); None: all null."""

    titles: Sequence[str | None] | None = None
    texts: Sequence[str | None] | None = None
    images: Sequence[bytes | None] | None = None
    metadata_json: Sequence[str | None] | None = None

    @staticmethod
    def of(table: pa.Table) -> Payloads:
        """The payload columns of rows read from the table."""
        return Payloads(*(table.column(c).to_pylist() for c in PAYLOAD_COLUMNS))


def item_inputs(rows: dict[str, dict[str, Any]], ids: Sequence[str], modality: str) -> list[Any]:
    """What an encoder embeds for stored rows (read with their payload columns): image bytes, or title and text."""
    if modality == "image":
        return [rows[i]["image"] for i in ids]
    return [{"title": rows[i].get("title"), "text": rows[i].get("text")} for i in ids]


def rows_table(
    schema: pa.Schema, column: str, version_id: str, ids: Sequence[str], vectors: np.ndarray, payloads: Payloads = Payloads()
) -> pa.Table:
    """Rows as the table stores them: payload, the model version, the vectors in `column` and
    null in every other vector column. Every writer (add, backfill, Ray workers) builds rows here."""
    n = len(ids)
    columns: dict[str, Any] = {
        "id": pa.array([str(i) for i in ids], pa.string()),
        "title": pa.array(list(payloads.titles) if payloads.titles is not None else [None] * n, pa.string()),
        "text": pa.array(list(payloads.texts) if payloads.texts is not None else [None] * n, pa.string()),
        "image": pa.array(list(payloads.images) if payloads.images is not None else [None] * n, pa.binary()),
        "metadata": pa.array(list(payloads.metadata_json) if payloads.metadata_json is not None else [None] * n, pa.string()),
        "model_version": pa.array([version_id] * n, pa.string()),
    }
    for name in schema.names:
        if name.startswith("vector"):
            typ = schema.field(name).type
            columns[name] = vector_array(vectors, typ.list_size) if name == column else pa.nulls(n, typ)
    return pa.table(columns, schema=schema)


def commit_replacement(ds: Any, new_fragments: list[Any], old_addresses: np.ndarray) -> None:
    """One Lance `Update` against `ds`'s version: the new fragments in, the rows at `old_addresses`
    marked deleted in their fragments' deletion files (O(rows replaced), no table scan)."""
    import lance

    updated, removed = [], []
    for fid in np.unique(old_addresses >> 32):
        meta = ds.get_fragment(int(fid)).delete_rows((old_addresses[(old_addresses >> 32) == fid] & 0xFFFFFFFF).tolist())
        if meta is None:
            removed.append(int(fid))
        else:
            updated.append(meta)
    op = lance.LanceOperation.Update(removed_fragment_ids=removed, updated_fragments=updated, new_fragments=new_fragments)
    lance.LanceDataset.commit(ds, op, read_version=ds.version)


def _content(row: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two items the same item: their text, title, image bytes and metadata."""
    meta = row.get("metadata")
    if isinstance(meta, str):
        meta = json.loads(meta)
    image = row.get("image")
    return (row.get("title") or None, row.get("text") or None, bytes(image) if image is not None else None, meta or None)


def sql_quote(text: str) -> str:
    """A SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


def id_filter(ids: Iterable[str]) -> str:
    """A SQL filter matching these ids (quotes escaped)."""
    return f"id IN ({', '.join(sql_quote(i) for i in ids)})"
