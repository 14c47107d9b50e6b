"""`compatret index`: create, fill, inspect, verify and roll back galleries (upgrades: see `rollout`)."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from compatret.cli import sharded
from compatret.cli.options import engine_options, ray_options
from compatret.cli.output import emit, friendly
from compatret.cli.rollout import index_backfill, index_gate, index_upgrade
from compatret.core.errors import CompatretError

if TYPE_CHECKING:
    import numpy as np


@click.group()
def index() -> None:
    """Create, fill, inspect and upgrade galleries (LanceDB tables + faiss search)."""


@index.command("create")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--model", help="Model alias (minilm-l6, minilm-l3) or compatret model folder.")
@click.option("--dim", type=int, help="Vector dim, for galleries of precomputed vectors.")
@click.option("--version-id", help="Name of the model that made the precomputed vectors.")
@click.option(
    "--index",
    "ann",
    type=click.Choice(["auto", "flat", "ivf", "ivfpq", "hnsw"]),
    default="auto",
    show_default=True,
    help="Search structure: exact (flat) or approximate (ivf; ivfpq: 16x smaller codes, re-ranked on the "
    "stored vectors; hnsw); auto = flat below 200,000 rows, else ivf.",
)
@click.option(
    "--merge",
    type=click.Choice(["raw", "shared"]),
    default="raw",
    show_default=True,
    help="How hits from rows of different model versions are ranked together.",
)
@click.option("--shards", type=int, help="Spread the gallery over N shard galleries, published together (see `index info`).")
@click.option("--json", "as_json", is_flag=True, help="Print the gallery info as JSON.")
@friendly
def index_create(
    directory: str, model: str | None, dim: int | None, version_id: str | None, ann: str, merge: str, shards: int | None, as_json: bool
) -> None:
    """Create an empty gallery served by MODEL (or by a bare version for --vectors)."""
    import compatret

    if model is not None and (dim is not None or version_id is not None):
        raise CompatretError("give either --model or --dim with --version-id, not both")
    info = compatret.create(directory, model, dim=dim, version_id=version_id, shards=shards, ann=ann, merge=merge).info()
    emit(info, as_json, f"created {directory}: {info['dim']}-d, serving {info['serving_model']}" + (f", {shards} shards" if shards else ""))


@index.command("add")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--items", type=click.Path(), help="Items to embed: .jsonl (id, text|title|image_path, metadata) or .parquet.")
@click.option(
    "--vectors",
    type=click.Path(),
    help="Precomputed vectors: .npy of shape (n, dim) (memory-mapped), or .parquet with a `vector` column (and `id`).",
)
@click.option("--ids", type=click.Path(), help="Ids for --vectors, .npy of n strings (default: fresh uuids).")
@click.option("--model", help="Model whose space --vectors are in (default: the gallery's stored space).")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option(
    "--skip-empty", is_flag=True, help="Leave out items with no text (or image) to embed, and list them, instead of refusing the file."
)
@engine_options
@click.option("--json", "as_json", is_flag=True)
@friendly
def index_add(
    directory: str,
    items: str | None,
    vectors: str | None,
    ids: str | None,
    model: str | None,
    batch_size: int,
    skip_empty: bool,
    engine: dict[str, Any],
    as_json: bool,
) -> None:
    """Add items (embedded with the serving model) or precomputed vectors; one commit per batch."""
    import compatret
    from compatret.data.items import read_items
    from compatret.store.gallery import Gallery

    if (items is None) == (vectors is None):
        raise CompatretError("give exactly one of --items or --vectors")
    if ids is not None and vectors is None:
        raise CompatretError("--ids goes with --vectors")
    if skip_empty and items is None:
        raise CompatretError("--skip-empty goes with --items")
    if batch_size < 1:
        raise CompatretError("--batch-size must be >= 1")
    if sharded.is_sharded(directory):
        _sharded_add(directory, items, vectors, ids, model, batch_size, skip_empty, engine, as_json)
        return
    gallery = compatret.open(directory)
    ray = ray_options(engine, batch_size)
    if items is not None and Path(items).is_file():  # (a missing file is the error to give first)
        from compatret.encoders.registry import check_endpoint

        check_endpoint(gallery.meta.serving_source, "add rows with it")  # a model behind an endpoint must still be the one registered
    if ray is not None and items is not None:
        from compatret.engine.ray_ingest import ingest_items

        ray_report = ingest_items(
            gallery.engine.gallery,  # type: ignore[union-attr]  # a single gallery here (sharded ones went above)
            gallery.engine.source_of_serving(),  # type: ignore[union-attr]
            items,
            ray,
            progress=not as_json,
            skip_empty=skip_empty,
        )
        rows = len(gallery)
        emit(
            {**ray_report, "rows": rows},
            as_json,
            f"added {ray_report['added']} rows ({ray_report['skipped']} already stored) on Ray; {rows} in all"
            + _empty_note(ray_report["skipped_empty"], ray_report["skipped_empty_ids"]),
        )
        return
    if items is not None:
        from compatret.core.interrupt import stop_on_sigint

        read = read_items(items, gallery.meta.modality, skip_empty)
        todo, before = read.items, len(gallery)
        try:
            with stop_on_sigint() as stop:  # the first Ctrl-C finishes the batch in hand
                added = gallery.add(items=todo, batch_size=batch_size, progress=not as_json, stop=stop)
        except KeyboardInterrupt:  # a second Ctrl-C: at once
            stop.set()
        if stop.is_set():
            done = Gallery.open(directory).count() - before
            click.echo(f"interrupted: {done} rows committed; rerun the same command to add the rest", err=True)
            sys.exit(130)
        total = len(todo)
    else:
        vec, id_list = _read_vectors(vectors, ids)  # type: ignore[arg-type]
        added, total = gallery.add(vectors=vec, ids=id_list, model=model, progress=not as_json, ray=ray), len(vec)
    rows = len(gallery)
    report: dict[str, Any] = {"added": added, "skipped": total - added, "rows": rows}
    if items is not None:
        from compatret.data.items import EMPTY_LISTED
        from compatret.encoders.remote import endpoint_stats

        report.update(skipped_empty=len(read.skipped_empty), skipped_empty_ids=read.skipped_empty[:EMPTY_LISTED])
        calls = endpoint_stats(gallery.encoder()) if added else None
        if calls is not None:  # a serving model behind an endpoint: what the add cost in calls
            report["endpoint"] = calls.to_dict()
    emit(
        report,
        as_json,
        f"added {added} rows ({total - added} already stored); {rows} in all"
        + (_empty_note(len(read.skipped_empty), read.skipped_empty) if items is not None else ""),
    )


def _read_vectors(vectors: str, ids: str | None) -> tuple[np.ndarray, np.ndarray | list[str] | None]:
    from compatret.data.items import read_array, read_vector_table

    if str(vectors).endswith(".parquet"):
        if ids is not None:
            raise CompatretError("a .parquet of vectors carries its own `id` column: --ids goes with .npy")
        return read_vector_table(vectors)
    return read_array(vectors, "vectors"), read_array(ids, "ids").astype(str) if ids is not None else None


def _sharded_add(
    directory: str, items: str | None, vectors: str | None, ids: str | None, model: str | None, batch_size: int,
    skip_empty: bool, engine: dict[str, Any], as_json: bool,
) -> None:  # fmt: skip
    service = sharded.open_sharded(directory)
    vec, id_list = _read_vectors(vectors, ids) if vectors is not None else (None, None)
    sharded.add(service, items, vec, id_list, model, batch_size, skip_empty, ray_options(engine, batch_size), as_json)


def _empty_note(count: int, ids: list[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:5]) + (", ..." if count > 5 else "")
    return f"\nleft out {count} empty item{'s' if count != 1 else ''} (--skip-empty): {shown}" if count else ""


@index.command("delete")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--id", "ids", multiple=True, required=True, help="Id to delete (repeatable).")
@click.option("--json", "as_json", is_flag=True)
@friendly
def index_delete(directory: str, ids: tuple[str, ...], as_json: bool) -> None:
    """Delete rows by id (all or nothing: an unknown id deletes none)."""
    import compatret

    gallery = compatret.open(directory)
    n = gallery.delete(list(ids))
    out = {"deleted": n, "rows": len(gallery)} | ({"snapshot": gallery.engine.snapshot.snapshot} if gallery.sharded else {})  # type: ignore[union-attr]
    emit(out, as_json, f"deleted {n} rows; {out['rows']} left" + (f"; snapshot {out['snapshot']}" if gallery.sharded else ""))


@index.command("info")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True)
@friendly
def index_info(directory: str, as_json: bool) -> None:
    """Rows, dims, serving model and its lineage, search kernel, history."""
    import compatret
    from compatret.store.history import describe_event

    gallery = compatret.open(directory)
    info = gallery.info()
    if gallery.sharded:
        emit(info, as_json, sharded.info_text(info))
        return
    lineage = " -> ".join(f"{v['id']}[{v['rule']}]" for v in info["lineage"])
    text = "\n".join(
        [
            f"gallery        {info['path']}",
            f"rows           {info['rows']}  ({', '.join(f'{k}: {v}' for k, v in info['rows_by_version'].items()) or 'empty'})",
            f"vectors        {info['dim']}-d {info['metric']}, gallery created with {info['vector_model']}",
            f"serving        {info['serving_model']}",
            f"lineage        {lineage}",
            f"query plan     {info['query_plan']['dims']} shared dims, {info['query_plan']['transforms']} transforms",
            f"rows read as   {', '.join(f'{k}: {v}' for k, v in info['rows_by_plan'].items()) or 'no rows'}",
            "groups         "
            + (
                "; ".join(
                    f"{g['model']}: {g['rows']} rows, {g['dim']}-d, read in {g['plan_dims']} dims"
                    + (f" through {g['plan_transforms']} transforms" if g["plan_transforms"] else "")
                    for g in info["groups"]
                )
                or "none"
            ),
            f"kernel         {info['kernel']}, index {info['ann']}, merge {info['merge']}",
            f"table version  {info['table_version']}",
            f"unembeddable   {info['unembeddable']} rows have no text or image (backfill skips them)"
            + (f", e.g. {', '.join(info['unembeddable_examples'])}" if info["unembeddable"] else ""),
        ]
        + [f"history        {h['time']} {describe_event(h)}" for h in info["history"]]
    )
    emit(info, as_json, text)


@index.command("verify")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--repair", is_flag=True, help="Rebuild the search cache from the table.")
@click.option("--json", "as_json", is_flag=True)
@friendly
def index_verify(directory: str, repair: bool, as_json: bool) -> None:
    """Compare the search cache with the table (ids, row versions, vector hashes, lineage); exit 1 on a mismatch."""
    import compatret

    report = compatret.open(directory).verify(repair=repair)
    emit(report, as_json, sharded.verify_text(report) if "shards" in report else _verify_text(report))
    if not report["ok"]:
        sys.exit(1)


def _verify_text(r: dict[str, Any]) -> str:
    head = f"table version {r['table_version']}: {r['rows']} rows in {r['fragments']} fragments, {r['cached_fragments']} cached"
    body = "ok: the cache matches the table" if r["ok"] else "\n".join(f"MISMATCH {m}" for m in r["mismatches"])
    return head + (" (cache rebuilt)" if r["repaired"] else "") + "\n" + body


@index.command("history")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--every-version", is_flag=True, help="One line per table version (default: a backfill's batches as one line).")
@click.option("--json", "as_json", is_flag=True)
@friendly
def index_history(directory: str, every_version: bool, as_json: bool) -> None:
    """Table versions: time, rows, serving model, what changed (a backfill's batches as one entry)."""
    import compatret

    gallery = compatret.open(directory)
    rows = gallery.history(every_version)
    if gallery.sharded:
        emit(rows, as_json, sharded.history_text(rows))
        return
    spans = [str(r["version"]) + (f"..{r['to_version']}" if r.get("to_version", r["version"]) != r["version"] else "") for r in rows]
    served = [r["serving"] or "-" for r in rows]
    wide = (max(map(len, spans), default=1), max(map(len, served), default=1), max((len(str(r["rows"])) for r in rows), default=1))
    text = "\n".join(
        f"{span:>{wide[0]}}  {r['time']}  {r['rows']:>{wide[2]}} rows  serving {model:<{wide[1]}}  {r['change']}"
        for span, model, r in zip(spans, served, rows)
    )
    emit(rows, as_json, text)


@index.command("rollback")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--to", "to", type=int, required=True, help="Table version to restore (a sharded gallery: snapshot; see `index history`).")
@click.option("--json", "as_json", is_flag=True)
@friendly
def index_rollback(directory: str, to: int, as_json: bool) -> None:
    """Restore rows, vectors and serving model of an earlier version (as a new version; nothing is lost)."""
    import compatret

    out = compatret.open(directory).rollback(to)
    now = f"now snapshot {out['snapshot']}" if "snapshot" in out else f"now table version {out['table_version']}"
    emit(out, as_json, f"restored {'snapshot' if 'snapshot' in out else 'version'} {to}: serving {out['serving']}, {now}")


@index.command("prune")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--older-than-days", type=float, default=7.0, show_default=True, help="Delete versions older than this.")
@click.option("--json", "as_json", is_flag=True)
@friendly
def index_prune(directory: str, older_than_days: float, as_json: bool) -> None:
    """Compact the table and delete old versions (the only command that forgets history)."""
    import datetime as dt

    import compatret

    if not (math.isfinite(older_than_days) and 0 <= older_than_days <= 365_000):
        raise CompatretError("--older-than-days must be a number of days from 0 to 365000")
    out = compatret.open(directory).prune(dt.timedelta(days=older_than_days))
    emit(out, as_json, f"versions{' (all shards)' if 'shards' in out else ''}: {out['versions_before']} -> {out['versions_after']}")


for command in (index_gate, index_upgrade, index_backfill):
    index.add_command(command)
