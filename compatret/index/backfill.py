"""Progressive backfill: re-embed rows with the serving model, one atomic commit per batch.

Resumable by construction: a row is pending while its `model_version` is not the serving
model, and each batch rewrites ids, vectors and `model_version` in one LanceDB commit. A stop
at any moment (SIGINT, SIGKILL) leaves every row either old or new, never half-written, and
the same command continues where it stopped. Queries keep working throughout, because old
and new vectors are compatible.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from compatret.errors import CompatretError
from compatret.index.service import Service

ORDERS = ("random", "uncertainty")
COMPACT_EVERY = 64  # batches: each commit adds fragments that every later merge must scan


@dataclass(frozen=True)
class BackfillReport:
    """What one run did; `remaining` rows still carry vectors of older models."""

    done: int
    remaining: int
    seconds: float
    stopped: bool
    serving: str

    @property
    def rows_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"done": self.done, "remaining": self.remaining, "seconds": self.seconds,
                "rows_per_s": self.rows_per_s, "stopped": self.stopped, "serving": self.serving}


def pending_ids(service: Service) -> list[str]:
    """Ids of rows whose vector was made by a model other than the serving one."""
    index = service.index
    serving = service.meta.serving.id
    return [str(i) for v, g in index.groups.items() if v != serving for i in g.ids]


def _random_key(serving: str, row_id: str) -> str:
    """A fixed pseudo-random position per (serving model, row): the order survives restarts."""
    return hashlib.blake2b(f"{serving}:{row_id}".encode(), digest_size=8).hexdigest()


def crowding(service: Service, ids: list[str], neighbours: int = 10) -> dict[str, float]:
    """Uncertainty proxy from the old vectors alone: mean cosine to a row's nearest neighbours
    in its own version's space. Rows in crowded regions are the ones an old model is least
    able to tell apart, so their old vectors are the least reliable (after FastFill's
    uncertainty ordering, Jaeckle et al. 2023, without its trained uncertainty head)."""
    index = service.index
    wanted = set(ids)
    out: dict[str, float] = {}
    for version, g in index.groups.items():
        mask = np.fromiter((i in wanted for i in g.ids), dtype=bool, count=len(g.ids))
        if not mask.any():
            continue
        kernel = index.kernel(version, service.kernel_name, "flat")
        scores, _ = kernel.search(g.vectors[mask], neighbours + 1)
        for row_id, s in zip(g.ids[mask], scores[:, 1:].mean(1)):
            out[str(row_id)] = float(s)
    return out


def plan_order(service: Service, ids: list[str], order: str) -> list[str]:
    if order == "random":
        serving = service.meta.serving.id
        return sorted(ids, key=lambda i: _random_key(serving, i))
    if order == "uncertainty":
        score = crowding(service, ids)
        return sorted(ids, key=lambda i: (-score[i], i))
    raise CompatretError(f"unknown order {order!r}; choose from {ORDERS}")


def _inputs(rows: dict[str, dict[str, Any]], ids: list[str], modality: str) -> list[Any]:
    if modality == "image":
        return [rows[i]["image"] for i in ids]
    return [{"title": rows[i].get("title"), "text": rows[i].get("text")} for i in ids]


def backfill(
    service: Service,
    limit: int | None = None,
    fraction: float | None = None,
    order: str = "random",
    batch_size: int = 64,
    progress: bool = True,
) -> BackfillReport:
    """Re-embed pending rows with the serving model until `limit` rows are done this run, or
    until `fraction` of all rows carry serving-model vectors (whichever is given; else all)."""
    if limit is not None and fraction is not None:
        raise CompatretError("give --limit or --fraction, not both")
    if fraction is not None and not 0.0 <= fraction <= 1.0:
        raise CompatretError(f"--fraction must be within [0, 1], got {fraction}")
    if limit is not None and limit < 0:
        raise CompatretError(f"--limit must be >= 0, got {limit}")
    if batch_size < 1:
        raise CompatretError("--batch-size must be >= 1")
    meta = service.meta
    if meta.modality == "vector" or meta.serving.id not in meta.sources:
        raise CompatretError(f"serving model {meta.serving.id!r} has no weights recorded here: nothing can re-embed rows")
    pending = pending_ids(service)
    total = service.index.size
    todo = len(pending)
    if fraction is not None:
        todo = max(0, min(todo, int(round(fraction * total)) - (total - len(pending))))
    elif limit is not None:
        todo = min(todo, limit)
    queue = plan_order(service, pending, order)[:todo]
    encoder = service.encoder()
    index = service.index
    done, stopped = 0, False
    start = time.perf_counter()
    bar = tqdm(total=len(queue), desc=f"backfill -> {meta.serving.id}", unit="row", disable=not progress)
    try:
        for s in range(0, len(queue), batch_size):
            ids = queue[s : s + batch_size]
            rows = service.gallery.payloads(ids)
            missing = [i for i in ids if i not in rows]
            if missing:  # deleted since the queue was planned
                ids = [i for i in ids if i in rows]
            vecs = encoder.encode_items(_inputs(rows, ids, meta.modality), batch_size=batch_size)
            version = service.gallery.update_vectors(ids, vecs, meta.serving)
            index.move(meta.serving.id, ids, vecs, version)
            done += len(ids)
            bar.update(len(ids))
            if (s // batch_size + 1) % COMPACT_EVERY == 0:
                service.gallery.table.optimize()  # merges small files; keeps versions younger than 7 days
                index.table_version = service.gallery.version
    except KeyboardInterrupt:
        stopped = True
    finally:
        bar.close()
    if done and not stopped:
        index.save(service.gallery)
    return BackfillReport(done, len(pending) - done, time.perf_counter() - start, stopped, meta.serving.id)
