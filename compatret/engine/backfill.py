"""Progressive backfill: re-embed rows with the serving model, one atomic commit per batch.

Resumable by construction: a row is pending while its `model_version` is not the serving
model, and each batch rewrites ids, vectors and `model_version` in one LanceDB commit. A stop
at any moment (SIGINT, SIGKILL) leaves every row either old or new, never half-written, and
the same command continues where it stopped. Queries keep working throughout, because old
and new vectors are compatible.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from compatret.core.errors import CompatretError
from compatret.core.interrupt import stop_on_sigint
from compatret.encoders.registry import check_endpoint
from compatret.encoders.remote import endpoint_stats, stats_since
from compatret.engine.service import Service
from compatret.search.kernels import make_kernel, sample_parts
from compatret.store.meta import GalleryMeta
from compatret.store.pending import Pending, pending_rows
from compatret.store.rows import item_inputs

if TYPE_CHECKING:
    from compatret.core.lineage import ModelVersion
    from compatret.engine.ray_cluster import RayOptions

ORDERS = ("auto", "random", "uncertainty")
COMPACT_EVERY = 64  # batches: each commit adds fragments that every later merge must scan


def compact_every() -> int:
    """Batches between compactions: $COMPATRET_COMPACT_EVERY, else COMPACT_EVERY."""
    return max(1, int(os.environ.get("COMPATRET_COMPACT_EVERY", COMPACT_EVERY)))


@dataclass(frozen=True)
class BackfillReport:
    """What one run did; `remaining` rows still carry vectors of older models and can be re-embedded;
    `skipped` rows cannot (stored as bare vectors, with no text or image to embed)."""

    done: int
    remaining: int
    seconds: float
    stopped: bool
    serving: str
    skipped: int = 0
    skipped_examples: tuple[str, ...] = ()
    endpoint: dict[str, float] | None = None  # requests, tokens, retries of a serving model behind an endpoint

    @property
    def rows_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "remaining": self.remaining,
            "seconds": self.seconds,
            "rows_per_s": self.rows_per_s,
            "stopped": self.stopped,
            "serving": self.serving,
            "skipped": self.skipped,
            "skipped_examples": list(self.skipped_examples),
            **({"endpoint": self.endpoint} if self.endpoint is not None else {}),
        }


def _random_key(serving: str, row_id: str) -> str:
    """A fixed pseudo-random position per (serving model, row): the order survives restarts."""
    return hashlib.blake2b(f"{serving}:{row_id}".encode(), digest_size=8).hexdigest()


def crowding(service: Service, ids: list[str], neighbours: int = 10, landmarks: int = 2048) -> dict[str, float]:
    """Uncertainty proxy from the old vectors alone: mean cosine of a row to its `neighbours`
    nearest among `landmarks` rows sampled from its own version. Rows in crowded regions are
    the ones an old model is least able to tell apart, so their old vectors are the least
    reliable (after FastFill's uncertainty ordering, Jaeckle et al. 2023, without its trained
    uncertainty head). O(rows x landmarks), never all pairs; an ordering heuristic, so it
    reads the search view; rows the view lacks go last."""
    index = service.index
    wanted = np.asarray(ids, dtype=str)
    out: dict[str, float] = {}
    rng = np.random.default_rng(0)
    for version in index.versions():
        parts = list(index.rows(version))
        kernel = make_kernel("faiss", sample_parts([(labels, vectors) for _, labels, vectors in parts], landmarks, rng))
        k = min(neighbours + 1, kernel.ntotal)
        for row_ids, _, vectors in parts:
            mask = np.isin(row_ids, wanted)
            if not mask.any():
                continue
            scores, _ = kernel.search(np.asarray(vectors)[mask], k)  # best first
            own = scores[:, 0] > 1 - 1e-5  # the row itself was sampled as a landmark: skip it
            mean = np.where(own, scores[:, 1:].sum(1), scores[:, : k - 1].sum(1)) / max(1, k - 1)
            out.update(zip(row_ids[mask].tolist(), mean.astype(float).tolist()))
    return out


def plan_order(service: Service, ids: list[str], order: str, block: int = 1, seed: str | None = None) -> list[str]:
    """The order a backfill re-embeds `ids` (given in table order) in; `random` is seeded by the
    serving model (the same order on every run of one upgrade) unless `seed` names another.

    `random` shuffles blocks of `block` consecutive rows, not single rows: a batch drawn from
    one block lies in one or two Lance fragments, so its commit touches those only and costs
    what the batch costs, while the batches still sample the gallery evenly. A row scattered
    batch would touch every fragment (ten at 1M rows, a hundred at 10M) on every commit.

    `auto`: `uncertainty` while the serving model reads rows through a fitted map (an adapter:
    mapped and native rows then share one ranking, and re-embedding the least reliable mapped rows
    first kept eval/adapt's curve from dipping, where a random order dipped 0.0087 at 50 %),
    else `random`.
    """
    if order == "auto":
        order = "uncertainty" if "mapped" in service.rows_by_plan() else "random"
    if order == "random":
        seed = seed or service.meta.serving.id
        blocks = [ids[s : s + block] for s in range(0, len(ids), max(1, block))]
        blocks.sort(key=lambda b: _random_key(seed, b[0]))
        return [i for b in blocks for i in b]
    if order == "uncertainty":
        score = crowding(service, ids)
        return sorted(ids, key=lambda i: (-score.get(i, -np.inf), i))
    raise CompatretError(f"unknown order {order!r}; choose from {ORDERS}")


def _check_bounds(limit: int | None, fraction: float | None, batch_size: int) -> None:
    if limit is not None and fraction is not None:
        raise CompatretError("give --limit or --fraction, not both")
    if fraction is not None and not 0.0 <= fraction <= 1.0:
        raise CompatretError(f"--fraction must be within [0, 1], got {fraction}")
    if limit is not None and limit < 0:
        raise CompatretError(f"--limit must be >= 0, got {limit}")
    if batch_size < 1:
        raise CompatretError("--batch-size must be >= 1")


def _rows_to_do(total: int, pending: Pending, limit: int | None, fraction: float | None) -> int:
    """How many pending rows this run re-embeds: `limit` of them, or enough that `fraction` of
    all rows carry serving-model vectors (rows that cannot be re-embedded count as not done)."""
    todo = len(pending.ids)
    if fraction is not None:
        done = total - len(pending.ids) - len(pending.unembeddable)
        return max(0, min(todo, int(round(fraction * total)) - done))
    return todo if limit is None else min(todo, limit)


def _queue(service: Service, pending: Pending, order: str, batch_size: int, limit: int | None, fraction: float | None) -> list[str]:
    """The pending rows this pass re-embeds, in the order it re-embeds them."""
    todo = _rows_to_do(service.gallery.count(), pending, limit, fraction)
    return plan_order(service, pending.ids, order, block=batch_size)[:todo]


def _same_serving(meta: GalleryMeta, serving: ModelVersion, done: int) -> None:
    """Raise once the gallery no longer serves the model this run writes (a rollback or an upgrade
    landed meanwhile): its vectors must not be written, nor the run reported as a success."""
    if meta.serving.id != serving.id:
        raise CompatretError(
            f"the gallery's serving model changed from {serving.id} to {meta.serving.id} during the backfill "
            f"(a rollback or upgrade): {done} rows re-embedded with {serving.id} before; "
            "run `compatret index backfill` again"
        )


def _reread(service: Service, serving: ModelVersion, done: int) -> Pending:
    """Pending rows as the table holds them now, for the model this run writes: what a report
    states (a rollback may have made re-embedded rows old again), never what the run planned."""
    pending = pending_rows(service.gallery)
    _same_serving(service.gallery.meta, serving, done)
    return pending


def backfill(
    service: Service,
    limit: int | None = None,
    fraction: float | None = None,
    order: str = "auto",
    batch_size: int = 64,
    progress: bool = True,
    ray: RayOptions | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> BackfillReport:
    """Re-embed pending rows with the serving model until `limit` rows are done this run, or
    until `fraction` of all rows carry serving-model vectors (whichever is given; else all).
    Ctrl-C, or `should_stop()` turning true (a server's stop request), ends it after the batch in hand.

    Each batch is read, embedded, then committed under the writer lock (held for the commit
    only, so other writers interleave); a row deleted or re-embedded meanwhile is left alone.
    Once its list is done the run reads the pending rows again and goes on: a rollback to a
    version of the same serving model makes re-embedded rows old again. A rollback or upgrade
    that changes the serving model raises a CompatretError before the next commit.
    """
    _check_bounds(limit, fraction, batch_size)
    gallery = service.gallery
    pending = pending_rows(service.gallery)
    meta = gallery.meta
    serving = meta.serving
    if pending.ids and serving.id not in meta.sources:
        raise CompatretError(f"serving model {serving.id!r} has no weights recorded here: nothing can re-embed rows")
    if pending.ids:
        check_endpoint(meta.serving_source, "backfill with it")  # a model behind an endpoint must still be the one registered
    queue = _queue(service, pending, order, batch_size, limit, fraction)
    start = time.perf_counter()
    if ray is not None:  # the same rows, re-embedded by Ray actors, committed here once per step; one pass
        from compatret.engine.ray_backfill import backfill_rows

        done = backfill_rows(gallery, service.source_of_serving(), queue, ray, progress) if queue else 0
        pending = _reread(service, serving, done) if queue else pending
        return BackfillReport(
            done,
            len(pending.ids),
            time.perf_counter() - start,
            False,
            serving.id,
            len(pending.unembeddable),
            tuple(pending.unembeddable[:5]),
        )
    encoder = service.encoder() if queue else None
    calls = endpoint_stats(encoder)
    calls_before = calls.to_dict() if calls else None
    every = compact_every()
    done = commits = 0
    with stop_on_sigint() as stop, tqdm(total=len(queue), desc=f"backfill -> {serving.id}", unit="row", disable=not progress) as bar:
        while queue:
            before = done
            for s in range(0, len(queue), batch_size):
                if stop.is_set() or (should_stop is not None and should_stop()):
                    stop.set()
                    break
                rows = gallery.payloads(queue[s : s + batch_size])
                ids = [i for i in queue[s : s + batch_size] if i in rows and rows[i]["model_version"] != serving.id]
                if not ids:
                    continue
                vecs = encoder.encode_items(item_inputs(rows, ids, meta.modality), batch_size=batch_size)  # type: ignore[union-attr]
                with gallery.writing("backfill"):
                    _same_serving(gallery.meta, serving, done)
                    written = gallery.update_vectors(ids, vecs, serving)  # less any row another writer took meanwhile
                    commits += 1
                    if commits % every == 0:
                        gallery.compact()
                done += written
                bar.update(written)
                if calls is not None:
                    bar.set_postfix(stats_since(calls, calls_before))
            pending = _reread(service, serving, done)
            if stop.is_set() or done == before:
                break
            queue = _queue(service, pending, order, batch_size, None if limit is None else limit - done, fraction)
            bar.total += len(queue)
            bar.refresh()
    return BackfillReport(
        done,
        len(pending.ids),
        time.perf_counter() - start,
        stop.is_set(),
        serving.id,
        len(pending.unembeddable),
        tuple(pending.unembeddable[:5]),
        stats_since(calls, calls_before),
    )
