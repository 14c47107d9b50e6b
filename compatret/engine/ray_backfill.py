"""`index backfill --engine ray`: Ray Data actors re-embed rows and write fragments; the driver commits each step."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pyarrow.compute  # noqa: F401  pa.compute
from tqdm.auto import tqdm

from compatret.core.errors import CompatretError
from compatret.engine.ray_cluster import RayOptions, _write_rows, actor_cpus, connect, ray_job
from compatret.store.gallery import Gallery
from compatret.store.rows import Payloads, commit_replacement, id_filter


class _BackfillWriter:
    """A Ray Data actor: re-embeds a block of pending rows (read from table version `version`)
    with the serving model and writes their new versions as fragments."""

    def __init__(self, uri: str, spec: str, column: str, version_id: str, modality: str, table_version: int) -> None:
        import lance

        from compatret.encoders import load_encoder

        self.ds = lance.dataset(uri, version=table_version)
        self.target = (uri, self.ds.schema, column, version_id, modality)
        self.encoder = load_encoder(spec)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        found = self.ds.to_table(
            columns=["id", "title", "text", "image", "metadata"], filter=id_filter([str(i) for i in batch["id"]]), with_row_address=True
        )
        ids = found.column("id").to_pylist()
        fragments = _write_rows(self.encoder, *self.target, ids, Payloads.of(found))
        return {
            "fragments": [json.dumps(fragments)],
            "ids": [json.dumps(ids)],
            "addresses": [json.dumps(found.column("_rowaddr").to_pylist())],
        }


def backfill_rows(gallery: Gallery, spec: str, queue: list[str], options: RayOptions, progress: bool = True) -> int:
    """Re-embed the rows of `queue` (ids, in backfill order) on Ray; returns the rows committed.

    A block whose rows changed before its commit (deleted, or written by another backfill) is
    not committed: its rows stay as they are (still pending, if old), and its file is removed
    by the next run's cleanup."""
    connect(options)
    with ray_job(gallery):
        return _backfill_steps(gallery, spec, queue, options, progress)


def _backfill_steps(gallery: Gallery, spec: str, queue: list[str], options: RayOptions, progress: bool) -> int:
    import ray.data

    done = 0
    meta = gallery.meta
    serving = meta.serving
    with gallery.writing("ray backfill: columns"):
        column = gallery.ensure_column(serving)
    bar = tqdm(total=len(queue), desc=f"ray backfill -> {serving.id}", unit="row", disable=not progress)
    for s in range(0, len(queue), options.step_rows):
        step = queue[s : s + options.step_rows]
        version = gallery.latest_version()
        ds = ray.data.from_items([{"id": i} for i in step], override_num_blocks=max(1, options.workers))
        out = ds.map_batches(
            _BackfillWriter,
            batch_size=options.batch_size,
            compute=ray.data.ActorPoolStrategy(size=options.workers),
            num_cpus=actor_cpus(options.workers),
            num_gpus=options.num_gpus_per_worker or None,
            fn_constructor_kwargs={
                "uri": gallery.dataset(version).uri,
                "spec": spec,
                "column": column,
                "version_id": serving.id,
                "modality": meta.modality,
                "table_version": version,
            },
        )
        written = [(json.loads(r["fragments"]), json.loads(r["ids"]), json.loads(r["addresses"])) for r in out.iter_rows()]
        with gallery.writing("ray backfill step"):
            if gallery.meta.serving.id != serving.id:
                raise CompatretError(f"serving model changed to {gallery.meta.serving.id!r} during the run: rerun to continue")
            done += _commit_blocks(gallery, written, serving.id)
        bar.update(len(step))
    bar.close()
    return done


def _commit_blocks(gallery: Gallery, written: list[tuple[list[str], list[str], list[int]]], serving: str) -> int:
    """One Update for the blocks whose rows are all still where the step read them, and still old."""
    import lance

    ds = gallery.dataset(gallery.latest_version())
    now = gallery.addresses_of([i for _, block_ids, _ in written for i in block_ids], version=ds.version)
    fragments: list[Any] = []
    old: list[int] = []
    for frags, block_ids, addresses in written:
        if all(now.get(i, (-1, serving))[0] == int(a) and now[i][1] != serving for i, a in zip(block_ids, addresses)):
            fragments.extend(lance.fragment.FragmentMetadata.from_json(f) for f in frags)
            old.extend(int(a) for a in addresses)
    if fragments:
        commit_replacement(ds, fragments, np.asarray(old, dtype=np.int64))
        gallery.latest_version()
    return len(old)
