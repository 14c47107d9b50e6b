"""Adding to a gallery: items embedded by the serving model, or precomputed vectors; checked
before the first commit, resumable (what is stored already with the same content is skipped)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from compatret.core.contract import resolve
from compatret.core.errors import CompatretError
from compatret.core.lineage import ModelVersion
from compatret.core.transforms import normalize
from compatret.data.items import duplicate_error, normal_item
from compatret.encoders import Encoder
from compatret.engine.models import named_version
from compatret.store.gallery import Gallery
from compatret.store.meta import GalleryMeta

if TYPE_CHECKING:
    from compatret.engine.ray_cluster import RayOptions


def new_ids(n: int) -> list[str]:
    """Fresh row ids, unique by construction (never reused after a delete)."""
    return [uuid.uuid4().hex for _ in range(n)]


ENCODE_BATCH = 32  # items per encoder call while adding: the progress bar moves this often


def embed_with_progress(encoder: Encoder, batch: Sequence[Any], bar: Any) -> np.ndarray:
    """encode_items in slices of ENCODE_BATCH, moving the bar after each (long abstracts take seconds per slice)."""
    parts = []
    for j in range(0, len(batch), ENCODE_BATCH):
        parts.append(np.asarray(encoder.encode_items(list(batch[j : j + ENCODE_BATCH]), batch_size=ENCODE_BATCH)))
        bar.update(len(parts[-1]))
    return np.concatenate(parts)


def check_query_vectors(vectors: Any, version: ModelVersion) -> np.ndarray:
    """Query vectors as float32 [n, dim]: finite and non-zero, else one error naming the row."""
    q = np.asarray(vectors, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != version.dim or not len(q):
        raise CompatretError(f"query vectors must have shape (n, {version.dim}) for model {version.id!r}, got {q.shape}")
    bad = np.flatnonzero(~np.isfinite(q).all(axis=1))
    if len(bad):
        raise CompatretError(f"query vector {int(bad[0])} contains NaN or infinity")
    zero = np.flatnonzero(~q.any(axis=1))
    if len(zero):
        raise CompatretError(f"query vector {int(zero[0])} is all zeros: it has no direction to rank by")
    return q


def check_writer(vectors: np.ndarray, version: ModelVersion, meta: GalleryMeta, gallery_dir: Path, block: int = 100_000) -> None:
    """Rows are stored in their own model's space; the serving model must be able to query them.

    Checked block by block, so a memory-mapped input is never copied whole."""
    resolve(meta.serving, version, gallery_dir)
    if vectors.ndim != 2 or vectors.shape[1] != version.dim:
        raise CompatretError(f"vectors must have shape (n, {version.dim}), got {vectors.shape}")
    for s in range(0, len(vectors), block):
        if not np.isfinite(vectors[s : s + block]).all():
            raise CompatretError(f"vectors contain NaN or infinity (in rows {s}..{min(len(vectors), s + block) - 1})")


def check_id_values(ids: np.ndarray) -> None:
    """Row ids given once each, none empty."""
    if len(np.unique(ids)) != len(ids):
        duplicate_error(ids.tolist(), "row")
    if (np.char.str_len(ids) == 0).any():
        raise CompatretError("ids must be non-empty strings")


def check_new_ids(gallery: Gallery, ids: Sequence[str] | np.ndarray) -> None:
    """New row ids: each once, none empty, none stored already."""
    arr = np.asarray(ids, dtype=str)
    check_id_values(arr)
    taken = gallery.existing(arr)
    if taken:
        raise CompatretError(f"{len(taken)} ids already in the gallery, e.g. {taken[0]!r}")


def add_vectors(
    gallery: Gallery,
    vectors: np.ndarray,
    ids: Sequence[str] | np.ndarray | None = None,
    model: str | None = None,
    batch_size: int = 100_000,
    progress: bool = False,
    ray: RayOptions | None = None,
) -> int:
    """Store precomputed vectors of `model` (default: the gallery's first model), one commit per
    batch; returns the rows added (rows stored already with the same vector are skipped).

    Streams: the input may be memory-mapped; it is checked in blocks before the first
    commit (all or nothing) and normalised block by block, so memory beyond the input
    stays constant. Rows without ids get `<uuid>-<n>` ids, unique by construction. With
    `ray`, Ray tasks normalise and write the blocks and this process commits them per step.
    """
    vectors = np.asarray(vectors)  # a list of rows too; a memory-mapped array stays mapped (no copy)
    if ray is not None:
        from compatret.engine.ray_ingest import ingest_vectors

        with gallery.writing("ray add vectors: checks"):
            version, id_arr, stored = vectors_to_add(gallery, vectors, ids, model)
        return ingest_vectors(gallery, vectors, id_arr, stored, version.id, ray, progress)
    with gallery.writing("add vectors"):
        version, ids, stored = vectors_to_add(gallery, vectors, ids, model, batch_size)
        token = uuid.uuid4().hex
        for s in tqdm(range(0, len(vectors), batch_size), desc="add", unit="batch", disable=not progress or len(vectors) <= batch_size):
            e = min(len(vectors), s + batch_size)
            keep = ~stored[s:e]
            chunk_ids = ids[s:e][keep].tolist() if ids is not None else [f"{token}-{i}" for i in range(s, e)]
            if chunk_ids:
                gallery.add_rows(chunk_ids, normalize(vectors[s:e][keep]), version)
        gallery.ensure_id_index()
    return int(len(vectors) - stored.sum())


def vectors_to_add(
    gallery: Gallery, vectors: np.ndarray, ids: Sequence[str] | np.ndarray | None, model: str | None, block: int = 100_000
) -> tuple[ModelVersion, np.ndarray | None, np.ndarray]:
    """Checks of an `add --vectors` (both engines), before any commit: the model whose space
    they are in, the ids as strings, and which rows are stored already with these vectors
    (skipped, so a rerun of an interrupted add finishes it; other content under an id is refused)."""
    meta = gallery.meta
    version = named_version(model, meta) if model is not None else meta.vector_model
    check_writer(vectors, version, meta, gallery.path, block)
    if ids is None:
        return version, None, np.zeros(len(vectors), dtype=bool)
    ids = np.asarray(ids).astype(str)
    if len(ids) != len(vectors):
        raise CompatretError(f"{len(ids)} ids for {len(vectors)} vectors")
    check_id_values(ids)
    return version, ids, gallery.stored_vectors_alike(ids, vectors, version, block)


def add_items(
    gallery: Gallery,
    encoder_of: Callable[[], Encoder],
    items: Sequence[dict[str, Any]],
    batch_size: int = 256,
    progress: bool = True,
    stop: threading.Event | None = None,
) -> int:
    """Embed items with the serving model and store them, one commit per batch; ids default to uuids.

    Resumable: items whose id is stored already with the same content are skipped (a rerun
    after an interruption finishes the job); an id stored with other content is refused.
    Returns the rows added."""
    if not items:
        return 0
    items = [normal_item(it) for it in items]  # parsed as the Ray engine and HTTP parse them
    images_all = [it["image"] for it in items]
    given = [it["id"] for it in items]
    named = [i for i in given if i is not None]
    duplicate_error(given)
    with gallery.writing("add items"):
        # under the lock: an identical add that committed while this one waited is found here, as a retry's is
        done = gallery.stored_alike([it for it in items if it["id"] is not None]) if named else set()
        keep = [n for n, i in enumerate(given) if i is None or i not in done]
        items = [items[n] for n in keep]
        if not items:
            return 0
        given = [given[n] for n in keep]
        defaults = iter(new_ids(sum(i is None for i in given)))
        ids = [i if i is not None else next(defaults) for i in given]
        texts = [it.get("text") for it in items]
        titles = [it.get("title") for it in items]
        images = [images_all[n] for n in keep]
        meta = gallery.meta
        check_new_ids(gallery, ids)
        is_image = meta.modality == "image"
        stray = [i for i, im in zip(ids, images) if im is not None] if not is_image else []
        if stray:
            raise CompatretError(f"this gallery holds {meta.modality}: {len(stray)} items carry an image, e.g. id {stray[0]!r}")
        payload = images if is_image else [t or ti or None for t, ti in zip(texts, titles)]
        missing = [i for i, p in zip(ids, payload) if p is None]
        if missing:
            raise CompatretError(f"{len(missing)} items have no {'image' if is_image else 'text'}, e.g. id {missing[0]!r}")
        encoder = encoder_of()
        bar = tqdm(total=len(items), desc="embed+add", unit="item", disable=not progress)
        for s in range(0, len(items), batch_size):
            if stop is not None and stop.is_set():  # Ctrl-C: the batches committed so far are all there is
                bar.close()
                return s
            sl = slice(s, s + batch_size)
            batch = [{"title": it.get("title"), "text": it.get("text")} for it in items[sl]] if not is_image else images[sl]
            vecs = embed_with_progress(encoder, batch, bar)
            check_writer(vecs, meta.serving, meta, gallery.path)
            vecs = normalize(vecs)
            gallery.add_rows(
                ids[sl],
                vecs,
                meta.serving,
                texts=texts[sl],
                images=images[sl],
                metadata=[it.get("metadata") for it in items[sl]],
                titles=titles[sl],
            )
            bar.set_postfix(committed=s + len(vecs))
        bar.close()
        gallery.ensure_id_index()
    return len(items)
