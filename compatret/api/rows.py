"""What the Index checks and reads row by row: items from parallel lists, metadata filters,
stored rows as dicts, the replacement an upsert commits, rows read in one model's space."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from compatret.core.errors import CompatretError

if TYPE_CHECKING:
    from compatret.engine.service import Service
    from compatret.store.meta import GalleryMeta

Where = Mapping[str, Any] | Callable[[dict[str, Any]], bool]  # metadata equal to every pair, or a predicate on it
ROW_COLUMNS = ["id", "title", "text", "metadata", "model_version"]


def text_items(
    texts: Sequence[str], ids: Sequence[str] | np.ndarray | None, metadatas: Sequence[dict[str, Any] | None] | None, needs_ids: bool = False
) -> list[dict[str, Any]]:
    """Items from parallel lists, checked: a list of non-empty texts, ids once each (required by upsert)."""
    not_one_string(texts, "texts")
    if needs_ids and ids is None:
        raise CompatretError("upsert needs an id for every text")
    bad = [n for n, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise CompatretError(f"text {bad[0]} is empty or not a string: nothing to embed")
    if ids is not None:
        not_one_string(ids, "ids")
        seen = [str(i) for i in ids]
        if len(set(seen)) != len(seen):
            raise CompatretError(f"id {next(i for i in seen if seen.count(i) > 1)!r} is given twice")
    if ids is not None and len(ids) != len(texts):
        raise CompatretError(f"{len(ids)} ids for {len(texts)} texts")
    if metadatas is not None and len(metadatas) != len(texts):
        raise CompatretError(f"{len(metadatas)} metadatas for {len(texts)} texts")
    return [
        {"id": None if ids is None else str(ids[n]), "text": t, "metadata": None if metadatas is None else metadatas[n]}
        for n, t in enumerate(texts)
    ]


def not_one_string(values: Any, what: str) -> None:
    """A str is a sequence of characters: one given where a list belongs is a mistake, said as one."""
    if isinstance(values, str | bytes):
        raise CompatretError(f"{what} must be a list, not one string: wrap it as [{values!r}]")


def row_of(r: dict[str, Any]) -> dict[str, Any]:
    return {**r, "metadata": json.loads(r["metadata"]) if r["metadata"] else None}


def differs(stored: dict[str, Any], item: dict[str, Any]) -> bool:
    return (stored.get("text"), stored.get("metadata") or None) != (item.get("text"), item.get("metadata") or None)


def equal_to(where: Mapping[str, Any]) -> Callable[[dict[str, Any]], bool]:
    pairs = dict(where)
    return lambda metadata: all(k in metadata and metadata[k] == v for k, v in pairs.items())


def replace_rows(service: Service, items: list[dict[str, Any]], stale: list[str]) -> int:
    """One gallery's upsert: embed with the serving model, then delete the stale rows and add the
    new ones under one writer lock (see Index.upsert)."""
    from compatret.core.transforms import normalize
    from compatret.engine.ingest import check_writer

    gallery = service.gallery
    texts = [it["text"] for it in items]
    with gallery.writing("upsert"):
        meta = gallery.meta
        if meta.modality != "text":
            raise CompatretError(f"upsert takes texts; this gallery holds {meta.modality}")
        vectors = np.asarray(service.encoder(None, meta).encode_items([{"title": None, "text": t} for t in texts]), dtype=np.float32)
        check_writer(vectors, meta.serving, meta, gallery.path)
        if stale:
            gallery.delete(stale)
        n = len(items)
        gallery.add_rows(
            [it["id"] for it in items], normalize(vectors), meta.serving, texts=texts, images=[None] * n,
            metadata=[it["metadata"] for it in items], titles=[None] * n,
        )  # fmt: skip
        gallery.ensure_id_index()
    return len(items)


def vectors_in(
    services: list[tuple[Service, int | None]], meta: GalleryMeta, ids: Sequence[str], model: str | None, encoder_of: Callable[[str], Any]
) -> np.ndarray:
    """Rows of `ids` read from each (service, version) in `model`'s space: stored vectors of that model
    as they are, rows of other models embedded again by `encoder_of(model id)` from their text or image."""
    from compatret.core.transforms import normalize
    from compatret.engine.models import named_version
    from compatret.store.rows import ID_FILTER_MAX, id_filter

    not_one_string(ids, "ids")
    version = named_version(model, meta)
    column = meta.column(version)
    wanted = list(dict.fromkeys(str(i) for i in ids))
    got: dict[str, np.ndarray] = {}
    other: dict[str, dict[str, Any]] = {}
    for service, at in services:
        have = service.gallery.dataset(at).schema.names
        columns = ["id", "model_version", "title", "text", "image"] + ([column] if column in have else [])
        for s in range(0, len(wanted), ID_FILTER_MAX):
            for r in service.gallery.scan(columns, where=id_filter(wanted[s : s + ID_FILTER_MAX]), version=at).to_pylist():
                if r["model_version"] == version.id and r.get(column) is not None:
                    got[r["id"]] = np.asarray(r[column], dtype=np.float32)
                else:
                    other[r["id"]] = r
    missing = [i for i in wanted if i not in got and i not in other]
    if missing:
        raise CompatretError(f"{len(missing)} ids not in the gallery, e.g. {missing[0]!r}")
    if other:
        image = meta.modality == "image"
        items = [r["image"] if image else {"title": r["title"], "text": r["text"]} for r in other.values()]
        bare = [i for i, it in zip(other, items) if not (it if image else (it["title"] or it["text"]))]
        if bare:
            raise CompatretError(f"row {bare[0]!r} holds a vector of another model and nothing to embed again")
        got.update(zip(other, normalize(np.asarray(encoder_of(version.id).encode_items(items), dtype=np.float32))))
    asked = [str(i) for i in ids]
    return np.stack([got[i] for i in asked]) if asked else np.zeros((0, version.dim), np.float32)
