"""Joining or starting a Ray cluster, one Ray job per gallery, and writing Lance fragments from Ray workers."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute  # noqa: F401  pa.compute
from filelock import FileLock, Timeout

from compatret.core.errors import CompatretError
from compatret.core.transforms import normalize
from compatret.store.gallery import Gallery
from compatret.store.rows import Payloads, rows_table

RAY_JOB_LOCK = ".ray-job.lock"
STEP_ROWS = 50_000  # rows per driver commit: what a killed driver can lose is one step's work


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # a running cluster (else $RAY_ADDRESS, else a local one is started)
    workers: int = 2
    batch_size: int = 256
    num_gpus_per_worker: float = 0.0
    step_rows: int = STEP_ROWS


def connect(options: RayOptions) -> None:
    """Join the cluster `options.address` or $RAY_ADDRESS names, or start a local one."""
    try:
        import ray
    except ImportError as exc:
        raise CompatretError("--engine ray needs the ray extra: pip install 'compatret[ray]'") from exc
    if ray.is_initialized():
        return
    import warnings

    # ray.init starts its processes with fork + exec: nothing of lance's runtime survives the exec
    warnings.filterwarnings("ignore", message="lancedb fork support is experimental")
    warnings.filterwarnings("ignore", message="lance is not fork-safe")
    # a small input is one block, so one actor of the pool works: true, and no fault
    warnings.filterwarnings("ignore", message="The minimum number of concurrent actors")
    address = options.address or os.environ.get("RAY_ADDRESS")
    try:
        ray.init(
            address=address,
            ignore_reinit_error=True,
            log_to_driver=False,
            include_dashboard=False,
            runtime_env={
                "env_vars": {"LANCEDB_LOG": "error", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0"), "OMP_NUM_THREADS": "1"}
            },
        )  # one thread per actor: actors are the parallelism
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise CompatretError(f"cannot reach the Ray cluster at {address or 'a new local cluster'}: {exc}") from exc
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False


@contextmanager
def ray_job(gallery: Gallery) -> Iterator[None]:
    """One Ray job per gallery at a time; on entry, files left by a failed attempt are deleted
    (under the writer lock too, so no local write has files in flight either)."""
    lock = FileLock(str(gallery.path / RAY_JOB_LOCK), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise CompatretError(f"another Ray job is writing {gallery.path}") from None
    try:
        with gallery.writing("ray job: remove files of failed attempts"):
            gallery.dataset(gallery.latest_version()).cleanup_old_versions(older_than=timedelta(days=365_000), delete_unverified=True)
        yield
    finally:
        lock.release()


def _write_rows(
    encoder: Any, uri: str, schema: pa.Schema, column: str, version_id: str, modality: str, ids: list[str], payloads: Payloads
) -> list[str]:
    """Encode rows with `encoder` and write them, exactly as the local engine stores them, as new
    Lance fragments of the table at `uri` (not committed): returns their metadata as JSON."""
    n = len(ids)
    if modality == "image":
        inputs: list[Any] = list(payloads.images or [None] * n)
    else:
        inputs = [{"title": t, "text": x} for t, x in zip(payloads.titles or [None] * n, payloads.texts or [None] * n)]
    vectors = normalize(encoder.encode_items(inputs, batch_size=max(1, n)))
    return _write_fragments(rows_table(schema, column, version_id, ids, vectors, payloads), uri)


def _write_fragments(table: pa.Table, uri: str) -> list[str]:
    """`table` written as new Lance fragments of the table at `uri` (one per file of up to its
    rows; not committed): their metadata as JSON, for the driver's commit."""
    import lance

    fragments = lance.fragment.write_fragments(table, uri, schema=table.schema, max_rows_per_file=max(1, table.num_rows))
    return [json.dumps(f.to_json()) for f in fragments]


def _append(gallery: Gallery, fragments: list[str]) -> None:
    """One Lance `Append` of fragments the workers wrote (the caller holds the writer lock)."""
    import lance

    ds = gallery.dataset(gallery.latest_version())
    lance.LanceDataset.commit(
        ds, lance.LanceOperation.Append([lance.fragment.FragmentMetadata.from_json(f) for f in fragments]), read_version=ds.version
    )
    gallery.latest_version()


def actor_cpus(workers: int) -> float:
    """CPUs each encoding actor reserves: one, or its share when the cluster has fewer CPUs than
    workers (the actors then share cores rather than wait for ever)."""
    import ray

    total = float(ray.cluster_resources().get("CPU", 1.0))
    return max(0.1, min(1.0, total / max(1, workers)))
