"""`--engine ray`: ingest and backfill on a Ray cluster, with the local engine's guarantees.

Workers (Ray Data actors that load the model once) encode their batches and write Lance
fragments straight into the gallery's table; the driver commits what they wrote once per
step, under the gallery's writer lock: an `Append` for ingest, an `Update` (new fragment,
old rows marked deleted) for backfill, exactly the rows, columns, lineage and model versions
the local engine writes. A killed worker is retried by Ray; a killed driver leaves the table
at its last committed step, and the same command continues (ingest skips the items already
stored, backfill takes the rows still pending). Files a failed attempt wrote are removed at
the start of the next run, while this run holds both the writer lock and the Ray job lock, so
no other process can have files in flight.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  pa.compute
from tqdm.auto import tqdm

from compatret.core.errors import CompatretError
from compatret.core.transforms import normalize
from compatret.data.items import EMPTY_LISTED, duplicate_error, has_content, normal_item
from compatret.engine.ray_cluster import RayOptions, _append, _write_fragments, _write_rows, actor_cpus, connect, ray_job
from compatret.store.gallery import Gallery
from compatret.store.rows import Payloads, rows_table, vector_array
from compatret.store.snapshots import shard_of


class _IngestWriter:
    """A Ray Data actor: the serving model loaded once; each batch encoded, normalised and
    written as Lance fragments; returns their metadata and the batch's ids."""

    def __init__(self, uri: str, spec: str, schema_ipc: bytes, column: str, version_id: str, modality: str) -> None:
        from compatret.encoders import load_encoder

        self.target = (uri, pa.ipc.read_schema(pa.py_buffer(schema_ipc)), column, version_id, modality)
        self.encoder = load_encoder(spec)

    def __call__(self, batch: pa.Table) -> dict[str, list[Any]]:
        ids = [i or uuid.uuid4().hex for i in batch.column("id").to_pylist()]
        fragments = _write_rows(self.encoder, *self.target, ids, Payloads.of(batch))
        return {"fragments": [json.dumps(fragments)], "ids": [json.dumps(ids)]}


ITEM_BLOCK_ROWS = 4096


def _normal_block(rows: list[dict[str, Any]] | pa.Table) -> pa.Table:
    """A block of items as the actors take them (id, title, text, image bytes, metadata JSON),
    each parsed by `normal_item` as a local add parses it."""
    items = [normal_item(r) for r in (rows.to_pylist() if isinstance(rows, pa.Table) else rows)]
    return pa.table(
        {
            "id": pa.array([it["id"] for it in items], pa.string()),
            "title": pa.array([it["title"] for it in items], pa.string()),
            "text": pa.array([it["text"] for it in items], pa.string()),
            "image": pa.array([it["image"] for it in items], pa.binary()),
            "metadata": pa.array(
                [json.dumps(it["metadata"], default=str) if it["metadata"] is not None else None for it in items], pa.string()
            ),
        }
    )


def _item_blocks(path: str) -> Iterator[pa.Table]:
    """The input file in blocks, read on the driver: workers on other machines need no access to
    it (nor to image files it names), and no read task competes with the actors for CPUs."""
    p = Path(path)
    if not p.exists():
        raise CompatretError(f"no such file: {p}")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(p).iter_batches(batch_size=ITEM_BLOCK_ROWS):
            yield _normal_block(pa.Table.from_batches([batch]))
    elif p.suffix == ".jsonl":
        rows: list[dict[str, Any]] = []
        with p.open() as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise CompatretError(f"{p}:{n}: each line must be a JSON object")
                    rows.append(row)
                if len(rows) >= ITEM_BLOCK_ROWS:
                    yield _normal_block(rows)
                    rows = []
        if rows:
            yield _normal_block(rows)
    else:
        raise CompatretError(f"{p}: items must be .jsonl or .parquet")


@dataclass
class _ItemScan:
    """One pass over the input: the items not stored yet as a Ray Dataset (None when there are
    none), the ids of the items kept, how many were stored already, and the ids (or item
    numbers) of the items left out as empty."""

    dataset: Any
    ids: list[str | None]
    numbers: list[int]  # each kept item's place in the file (1-based), for errors
    stored: int
    empty: list[str]


def _read_items(
    path: str, modality: str, gallery: Gallery, check_alike: bool, skip_empty: bool = False, shard: tuple[int, int] | None = None
) -> _ItemScan:
    """The input file read block by block into Ray's object store. Items with nothing to embed
    are refused here, before any commit, as the local engine does (or left out, `skip_empty`);
    with `check_alike`, a stored id must hold the same content (else an error naming it).
    `shard` (i, n): only the items whose id lands on shard i of n (every item is still checked)."""
    import ray
    import ray.data

    refs, ids_all, numbers, skipped, empty_all, seen = [], [], [], 0, [], 0
    for block in _item_blocks(path):
        ids = block.column("id").to_pylist()
        texts = pa.compute.coalesce(block.column("text"), block.column("title")).to_pylist()
        titles = block.column("title").to_pylist()
        images = block.column("image").to_pylist()
        full = [has_content({"text": t, "title": ti, "image": im}, modality) for t, ti, im in zip(texts, titles, images)]
        if not all(full):
            first = full.index(False)
            if not skip_empty:
                raise CompatretError(
                    f"{path}: item {seen + first + 1} ({ids[first]!r}) has no {'image' if modality == 'image' else 'text'} "
                    "(--skip-empty leaves such items out)"
                )
            empty_all += [str(i) if i is not None else f"item {seen + n + 1}" for n, (i, ok) in enumerate(zip(ids, full)) if not ok]
            block = block.filter(pa.array(full))
            ids = block.column("id").to_pylist()
        kept = [seen + n + 1 for n, ok in enumerate(full) if ok]
        seen += len(full)
        if shard is not None:
            if any(i is None for i in ids):
                raise CompatretError(f"{path}: items of a sharded gallery need ids (the id picks the shard)")
            mine = [shard_of(str(i), shard[1]) == shard[0] for i in ids]
            block = block.filter(pa.array(mine))
            kept, ids = [k for k, m in zip(kept, mine) if m], [i for i, m in zip(ids, mine) if m]
        numbers += kept
        ids_all += ids
        named = [i for i in ids if i is not None]
        stored = set(gallery.existing(named)) if named else set()
        if stored:
            fresh = pa.array([i is None or i not in stored for i in ids])
            if check_alike:
                gallery.stored_alike(block.filter(pa.compute.invert(fresh)).to_pylist())
            block = block.filter(fresh)
            skipped += len(stored)
        if block.num_rows:
            refs.append(ray.put(block))
    dataset = ray.data.from_arrow_refs(refs) if refs else None  # type: ignore[arg-type]  # ray.put returns the ObjectRef ray.types names
    return _ItemScan(dataset, ids_all, numbers, skipped, empty_all)


MAX_PASSES = 5


def _append_blocks(gallery: Gallery, pending: list[tuple[list[str], list[str]]]) -> int:
    """Append the pending (fragments, ids) blocks in one commit, leaving out any whose ids got
    stored meanwhile; empties `pending` and returns the rows appended."""
    with gallery.writing("ray ingest step"):
        ids = [i for _, block in pending for i in block]
        taken = set(gallery.existing(ids)) if ids else set()
        seen: set[str] = set()
        fresh: list[str] = []
        count = 0
        for fragments, block in pending:
            if taken.intersection(block) or seen.intersection(block):
                continue  # a block another attempt stored first: its file is an orphan, removed next run
            seen.update(block)
            fresh.extend(fragments)
            count += len(block)
        if fresh:
            _append(gallery, fresh)
    pending.clear()
    return count


def ingest_items(
    gallery: Gallery,
    spec: str,
    path: str,
    options: RayOptions,
    progress: bool = True,
    skip_empty: bool = False,
    shard: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """`index add --items F --engine ray`: returns the rows added, and those skipped as already stored.

    Runs in passes: each pass encodes and writes the rows whose ids are not stored yet, and the
    driver commits what comes back once per step. Rows a dead worker's batch never returned
    are simply not stored, so the next pass takes them (Ray retries a killed worker's task,
    but this does not rely on it). Rows without ids get uuids and cannot be resumed."""
    import ray
    import ray.data

    connect(options)
    start = time.perf_counter()
    with ray_job(gallery):
        meta = gallery.meta
        version = meta.serving
        with gallery.writing("ray ingest: columns"):
            column = gallery.ensure_column(version)
        ds_now = gallery.dataset(gallery.latest_version())
        schema, uri = ds_now.schema, ds_now.uri
        skipped = added = 0
        empty: list[str] = []
        named: list[str] = []
        bar = tqdm(desc=f"ray ingest -> {version.id}", unit="row", disable=not progress)
        for n_pass in range(MAX_PASSES):
            scan = _read_items(path, meta.modality, gallery, check_alike=n_pass == 0, skip_empty=skip_empty, shard=shard)
            items = scan.dataset
            if n_pass == 0:
                named = [i for i in scan.ids if i is not None]
                duplicate_error(scan.ids, "item", scan.numbers)
                skipped, bar.total, empty = scan.stored, len(scan.ids) - scan.stored, scan.empty
            if items is None:
                break
            out = items.map_batches(
                _IngestWriter,
                batch_size=options.batch_size,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=options.workers),
                num_cpus=actor_cpus(options.workers),
                num_gpus=options.num_gpus_per_worker or None,
                fn_constructor_kwargs={
                    "uri": uri,
                    "spec": spec,
                    "schema_ipc": schema.serialize().to_pybytes(),
                    "column": column,
                    "version_id": version.id,
                    "modality": meta.modality,
                },
            )
            pending: list[tuple[list[str], list[str]]] = []
            rows = 0
            for row in out.iter_rows():
                block = json.loads(row["ids"])
                if block:
                    pending.append((json.loads(row["fragments"]), block))
                    rows += len(block)
                if rows >= options.step_rows:
                    c = _append_blocks(gallery, pending)
                    added += c
                    bar.update(c)
                    rows = 0
            c = _append_blocks(gallery, pending)
            added += c
            bar.update(c)
            if not named or len(gallery.existing(named)) == len(named):
                break
        bar.close()
        lost = len(named) - len(gallery.existing(named)) if named else 0
        if lost:
            raise CompatretError(f"{lost} rows were not stored after {MAX_PASSES} passes (workers keep failing); rerun to continue")
        with gallery.writing("ray ingest: id index"):
            gallery.ensure_id_index()
    return {
        "added": added,
        "skipped": skipped,
        "skipped_empty": len(empty),
        "skipped_empty_ids": empty[:EMPTY_LISTED],
        "seconds": time.perf_counter() - start,
        "engine": "ray",
        "workers": options.workers,
    }


VECTOR_BLOCK_ROWS = 100_000  # rows per worker task and Lance fragment of `add --vectors` (the local engine's batch)


def _write_vector_block(batch: pa.Table, uri: str, schema_ipc: bytes, column: str, version_id: str) -> dict[str, list[Any]]:
    """A Ray task: one block of precomputed vectors normalised and written as Lance fragments
    (not committed), exactly as the local engine stores them."""
    ids = batch.column("id").to_pylist()
    vec = batch.column("vector").combine_chunks()
    vectors = normalize(vec.values.to_numpy(zero_copy_only=False).reshape(len(ids), vec.type.list_size))
    table = rows_table(pa.ipc.read_schema(pa.py_buffer(schema_ipc)), column, version_id, ids, vectors)
    return {"fragments": [json.dumps(_write_fragments(table, uri))], "ids": [json.dumps(ids)]}


def ingest_vectors(
    gallery: Gallery,
    vectors: np.ndarray,
    ids: np.ndarray | None,
    stored: np.ndarray,
    version_id: str,
    options: RayOptions,
    progress: bool = True,
) -> int:
    """`index add --vectors X --engine ray`, after the checks of `engine.ingest.vectors_to_add`: rows
    not `stored` yet are normalised and written by Ray tasks, a block each, and committed by
    the driver once per step (one block per worker). Returns the rows added."""
    import ray
    import ray.data

    connect(options)
    added = 0
    with ray_job(gallery):
        version = gallery.meta.version(version_id)
        with gallery.writing("ray add vectors: columns"):
            column = gallery.ensure_column(version)
        ds_now = gallery.dataset(gallery.latest_version())
        target = {"uri": ds_now.uri, "schema_ipc": ds_now.schema.serialize().to_pybytes(), "column": column, "version_id": version.id}
        token = uuid.uuid4().hex
        step = VECTOR_BLOCK_ROWS * max(1, options.workers)
        bar = tqdm(total=int(len(vectors) - stored.sum()), desc=f"ray add -> {version.id}", unit="row", disable=not progress)
        for s0 in range(0, len(vectors), step):
            refs = []
            for s in range(s0, min(len(vectors), s0 + step), VECTOR_BLOCK_ROWS):
                e = min(len(vectors), s + VECTOR_BLOCK_ROWS)
                keep = ~stored[s:e]
                block_ids = ids[s:e][keep] if ids is not None else np.array([f"{token}-{i}" for i in range(s, e)])
                if len(block_ids):
                    values = vector_array(vectors[s:e][keep], version.dim)
                    refs.append(ray.put(pa.table({"id": pa.array(block_ids.tolist(), pa.string()), "vector": values})))
            if not refs:
                continue
            out = ray.data.from_arrow_refs(refs).map_batches(  # type: ignore[arg-type]  # ray.put's ObjectRef is ray.types'
                _write_vector_block,  # type: ignore[arg-type]  # Ray types a batch function's extra arguments as Any only
                batch_size=None,
                batch_format="pyarrow",
                num_cpus=actor_cpus(options.workers),
                fn_kwargs=target,
            )
            written = [(json.loads(r["fragments"]), json.loads(r["ids"])) for r in out.iter_rows()]
            with gallery.writing("ray add vectors step"):
                ids_now = [i for _, b in written for i in b]
                taken = gallery.existing(ids_now)
                if taken:  # another writer stored some of them meanwhile: nothing of this step is committed
                    raise CompatretError(f"ids of this run were stored by another writer meanwhile, e.g. {taken[0]!r}; rerun to continue")
                _append(gallery, [f for frags, _ in written for f in frags])
            added += len(ids_now)
            bar.update(len(ids_now))
        bar.close()
        with gallery.writing("ray add vectors: id index"):
            gallery.ensure_id_index()
    return added
