"""The `compatret` command: index, query and quickstart, with --json for scripts and one-line errors."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

import click

from compatret.commands.output import emit, friendly, say
from compatret.errors import CompatretError

# Hugging Face's per-model "Loading weights" bars say nothing a user needs and bury the one error
# line; compatret's own bars (embedding, training, backfill) are tqdm's and stay. Set it to 0 to see them.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# Into a log file, not a terminal: a progress line every 30 s, not ten a second. tqdm reads this
# when it is first imported, so here, before any command imports it.
if not sys.stderr.isatty():
    os.environ.setdefault("TQDM_MININTERVAL", "30")


@click.group()
@click.version_option(package_name="compatret")
def main() -> None:
    """compatret: retrieval with backward-compatible embeddings. Upgrade the model, keep the index."""


@main.group()
def index() -> None:
    """Create, fill, inspect and upgrade galleries (LanceDB tables + faiss search)."""


@index.command("create")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--model", help="Model alias (minilm-l6, minilm-l3) or compatret model folder.")
@click.option("--dim", type=int, help="Vector dim, for galleries of precomputed vectors.")
@click.option("--version-id", help="Name of the model that made the precomputed vectors.")
@click.option("--index", "ann", type=click.Choice(["auto", "flat", "ivf", "ivfpq", "hnsw"]), default="auto", show_default=True,
              help="Search structure: exact (flat) or approximate (ivf; ivfpq: 16x smaller codes, re-ranked on the "
                   "stored vectors; hnsw); auto = flat below 200,000 rows, else ivf.")
@click.option("--merge", type=click.Choice(["raw", "shared"]), default="raw", show_default=True,
              help="How hits from rows of different model versions are ranked together.")
@click.option("--json", "as_json", is_flag=True, help="Print the gallery info as JSON.")
@friendly
def index_create(directory: str, model: str | None, dim: int | None, version_id: str | None, ann: str, merge: str, as_json: bool) -> None:
    """Create an empty gallery served by MODEL (or by a bare version for --vectors)."""
    from compatret.index.service import Service

    if model is not None and (dim is not None or version_id is not None):
        raise CompatretError("give either --model or --dim with --version-id, not both")
    info = Service.create(directory, model=model, dim=dim, version_id=version_id, ann=ann, merge=merge).info()
    emit(info, as_json, f"created {directory}: {info['dim']}-d, serving {info['serving_model']}")


ENGINE_SETTINGS = ("engine", "ray_address", "workers", "num_gpus_per_worker", "step_rows")


def engine_options(fn: Any) -> Any:
    """--engine local|ray and the Ray settings, shared by `index add` and `index backfill`; the
    command receives them as one `engine` dict (see ray_options)."""

    @functools.wraps(fn)
    def with_engine(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, engine={k: kwargs.pop(k) for k in ENGINE_SETTINGS}, **kwargs)

    for option in reversed([
        click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="ray: Ray workers encode (--items) or normalise (--vectors) rows and write Lance fragments; this process commits them once per step."),
        click.option("--ray-address", help="A running Ray cluster (default: $RAY_ADDRESS, else a local one is started)."),
        click.option("--workers", type=int, default=2, show_default=True, help="Ray encoding actors."),
        click.option("--num-gpus-per-worker", type=float, default=0.0, show_default=True),
        click.option("--step-rows", type=int, default=50_000, show_default=True, help="Rows per commit with --engine ray."),
    ]):
        with_engine = option(with_engine)
    return with_engine


def ray_options(engine: dict[str, Any], batch_size: int) -> Any:
    """RayOptions from the --engine settings (None for the local engine)."""
    from compatret.index.ray_engine import RayOptions

    if engine["workers"] < 1 or engine["num_gpus_per_worker"] < 0 or engine["step_rows"] < 1:
        raise CompatretError("--workers and --step-rows must be >= 1, --num-gpus-per-worker >= 0")
    if engine["engine"] != "ray":
        return None
    return RayOptions(engine["ray_address"], engine["workers"], batch_size, engine["num_gpus_per_worker"], engine["step_rows"])


@index.command("add")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--items", type=click.Path(), help="Items to embed: .jsonl (id, text|title|image_path, metadata) or .parquet.")
@click.option("--vectors", type=click.Path(), help="Precomputed vectors: .npy of shape (n, dim) (memory-mapped), or .parquet with a `vector` column (and `id`).")
@click.option("--ids", type=click.Path(), help="Ids for --vectors, .npy of n strings (default: fresh uuids).")
@click.option("--model", help="Model whose space --vectors are in (default: the gallery's stored space).")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--skip-empty", is_flag=True, help="Leave out items with no text (or image) to embed, and list them, instead of refusing the file.")
@engine_options
@click.option("--json", "as_json", is_flag=True)
@friendly
def index_add(directory: str, items: str | None, vectors: str | None, ids: str | None, model: str | None, batch_size: int,
              skip_empty: bool, engine: dict[str, Any], as_json: bool) -> None:
    """Add items (embedded with the serving model) or precomputed vectors; one commit per batch."""
    from compatret.data.items import read_array, read_items, read_vector_table
    from compatret.index.gallery import Gallery
    from compatret.index.service import Service

    if (items is None) == (vectors is None):
        raise CompatretError("give exactly one of --items or --vectors")
    if ids is not None and vectors is None:
        raise CompatretError("--ids goes with --vectors")
    if skip_empty and items is None:
        raise CompatretError("--skip-empty goes with --items")
    if batch_size < 1:
        raise CompatretError("--batch-size must be >= 1")
    service = Service.open(directory)
    ray = ray_options(engine, batch_size)
    if items is not None and Path(items).is_file():  # (a missing file is the error to give first)
        from compatret.encoders.registry import check_endpoint

        check_endpoint(service.meta.serving_source, "add rows with it")  # a model behind an endpoint must still be the one registered
    if ray is not None and items is not None:
        from compatret.index.ray_engine import ingest_items

        report = ingest_items(service.gallery, service.source_of_serving(), items, ray, progress=not as_json,  # type: ignore[arg-type]
                              skip_empty=skip_empty)
        rows = service.gallery.count()
        emit({**report, "rows": rows}, as_json, f"added {report['added']} rows ({report['skipped']} already stored) on Ray; {rows} in all"
                                                + _empty_note(report["skipped_empty"], report["skipped_empty_ids"]))
        return
    if items is not None:
        from compatret.index.interrupt import stop_on_sigint

        read = read_items(items, service.meta.modality, skip_empty)
        todo, before = read.items, service.gallery.count()
        try:
            with stop_on_sigint() as stop:  # the first Ctrl-C finishes the batch in hand
                added = service.add_items(todo, batch_size=batch_size, progress=not as_json, stop=stop)
        except KeyboardInterrupt:  # a second Ctrl-C: at once
            stop.set()
        if stop.is_set():
            done = Gallery.open(directory).count() - before
            click.echo(f"interrupted: {done} rows committed; rerun the same command to add the rest", err=True)
            sys.exit(130)
        total = len(todo)
    else:
        if str(vectors).endswith(".parquet"):
            if ids is not None:
                raise CompatretError("a .parquet of vectors carries its own `id` column: --ids goes with .npy")
            vec, id_list = read_vector_table(vectors)  # type: ignore[arg-type]
        else:
            vec = read_array(vectors, "vectors")  # type: ignore[arg-type]
            id_list = read_array(ids, "ids").astype(str) if ids is not None else None
        added, total = service.add_vectors(vec, ids=id_list, model=model, progress=not as_json, ray=ray), len(vec)
    rows = service.gallery.count()
    report: dict[str, Any] = {"added": added, "skipped": total - added, "rows": rows}
    if items is not None:
        from compatret.data.items import EMPTY_LISTED
        from compatret.encoders.remote import endpoint_stats

        report.update(skipped_empty=len(read.skipped_empty), skipped_empty_ids=read.skipped_empty[:EMPTY_LISTED])
        calls = endpoint_stats(service.encoder()) if added else None
        if calls is not None:  # a serving model behind an endpoint: what the add cost in calls
            report["endpoint"] = calls.to_dict()
    emit(report, as_json, f"added {added} rows ({total - added} already stored); {rows} in all"
                          + (_empty_note(len(read.skipped_empty), read.skipped_empty) if items is not None else ""))


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
    from compatret.index.service import Service

    service = Service.open(directory)
    n = service.delete(list(ids))
    emit({"deleted": n, "rows": service.gallery.count()}, as_json, f"deleted {n} rows; {service.gallery.count()} left")


@index.command("gate")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--queries", required=True, type=click.Path(dir_okay=False), help="Queries (.jsonl, `_id` and `text`).")
@click.option("--qrels", required=True, type=click.Path(dir_okay=False), help="Their judgements (BEIR qrels TSV).")
@click.option("--json", "as_json", is_flag=True)
@friendly
def index_gate(directory: str, queries: str, qrels: str, as_json: bool) -> None:
    """Store the queries that gate upgrades over HTTP (POST /upgrade with "gate": true) beside the gallery."""
    from compatret.evaluation.regression import store_gate
    from compatret.index.gallery import Gallery

    Gallery.open(directory)
    folder = store_gate(directory, queries, qrels)
    emit({"gate": str(folder)}, as_json, f"stored the gate queries in {folder}")


def gate_options(purpose: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--gate, --qrels, --max-drop, --max-flips: the regression gate's options (upgrade, backfill)."""
    options = [
        click.option("--gate", "gate_queries", type=click.Path(dir_okay=False), help=f"Queries (.jsonl, `_id` and `text`): {purpose}."),
        click.option("--qrels", type=click.Path(dir_okay=False), help="Judgements for --gate (BEIR qrels TSV)."),
        click.option("--max-drop", type=float, default=0.005, show_default=True,
                     help="Fail when the lower 95% bound of the nDCG@10 change is below minus this."),
        click.option("--max-flips", type=float, default=0.05, show_default=True,
                     help="Fail when more than this fraction of queries lose their relevant top-10 hit."),
    ]

    def apply(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return apply


def gate_files(queries: str | None, qrels: str | None) -> bool:
    """Whether a gate was asked for; one error when only half of it was."""
    if (queries is None) != (qrels is None):
        raise CompatretError("the gate needs both --gate QUERIES and --qrels JUDGEMENTS")
    return queries is not None


@index.command("upgrade")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--model", required=True, help="The new model: its lineage must reach the gallery's model.")
@gate_options("check the new model on them first: refuse the upgrade if it serves them worse")
@click.option("--json", "as_json", is_flag=True)
@friendly
def index_upgrade(directory: str, model: str, gate_queries: str | None, qrels: str | None, max_drop: float, max_flips: float,
                  as_json: bool) -> None:
    """Make a compatible model the serving model in O(1): nothing is re-embedded."""
    import time

    from compatret.index.service import NeedsAdapter, Service

    service = Service.open(directory)
    before = service.meta.serving.id
    gate = None
    if gate_files(gate_queries, qrels):
        from compatret.evaluation.regression import gate_check

        gate = gate_check(directory, model, gate_queries, qrels, max_drop, max_flips)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    try:
        meta = service.upgrade(model, gate=gate)
    except NeedsAdapter as exc:
        raise exc.for_command(directory, model) from None
    dt = time.perf_counter() - t0
    plan = service.plan()
    read_as = service.rows_by_plan()  # as `index info` says it: the stored rows, group by group
    adapter = adapter_estimate(model, directory)
    out = {"previous": before, "serving": meta.serving.id, "vector_model": meta.vector_model.id,
           "query_dims": plan.dims, "transforms": len(plan.gallery_transforms), "rows_by_plan": read_as, "seconds": dt, "gate": gate,
           "adapter_estimate": adapter[0] if adapter else None}
    how = ", ".join(f"{n} {READ_AS[k]}" for k, n in read_as.items()) or "no rows stored yet"
    emit(out, as_json, f"serving {meta.serving.id} (was {before}); nothing re-embedded; stored rows: {how}; {dt * 1000:.1f} ms"
                       + (f"\n{adapter[1]}" if adapter else ""))


READ_AS = {"native": "are its own vectors", "same space": "are read as they are (same space)",
           "shared dims": "are read in their shared dims", "mapped": "are mapped into its space by a fitted transform"}


def adapter_estimate(model: str, directory: str) -> tuple[dict[str, Any], str] | None:
    """An adapter folder's estimate against staying (written by `compatret adapt`) and a line saying it."""
    from compatret.adapt.build import ADAPTER_FILE

    path = Path(model) / ADAPTER_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    est = record.get("estimate") if isinstance(record, dict) else None
    if not isinstance(est, dict) or not all(isinstance(est.get(k), (int, float)) for k in ("stay", "adapted", "change", "low", "high", "queries")):
        return None  # not written by `compatret adapt` (or by an older one): nothing to show
    where = record.get("gallery")
    elsewhere = where and Path(where) != Path(directory).resolve()
    line = (f"adapter estimate (compatret adapt, {'on ' + where if elsewhere else 'on this gallery'}): staying on {record.get('from')} "
            f"{est['stay']:.3f} vs adapted {est['adapted']:.3f} nDCG@10 on {est['queries']} pseudo-queries, change {est['change']:+.3f} "
            f"[{est['low']:+.3f}, {est['high']:+.3f}]" + (" - estimated worse, written with --force" if record.get("forced") and est["change"] < 0 else ""))
    return est, line


@index.command("info")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True)
@friendly
def index_info(directory: str, as_json: bool) -> None:
    """Rows, dims, serving model and its lineage, search kernel, history."""
    from compatret.index.history import describe_event
    from compatret.index.service import Service

    info = Service.open(directory).info()
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
            "groups         " + ("; ".join(f"{g['model']}: {g['rows']} rows, {g['dim']}-d, read in {g['plan_dims']} dims"
                                           + (f" through {g['plan_transforms']} transforms" if g["plan_transforms"] else "")
                                           for g in info["groups"]) or "none"),
            f"kernel         {info['kernel']}, index {info['ann']}, merge {info['merge']}",
            f"table version  {info['table_version']}",
            f"unembeddable   {info['unembeddable']} rows have no text or image (backfill skips them)"
            + (f", e.g. {', '.join(info['unembeddable_examples'])}" if info["unembeddable"] else ""),
        ]
        + [f"history        {h['time']} {describe_event(h)}" for h in info["history"]]
    )
    emit(info, as_json, text)


@index.command("backfill")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--limit", type=int, help="Re-embed at most N rows in this run.")
@click.option("--fraction", type=float, help="Stop once this fraction of all rows carries serving-model vectors.")
@click.option("--order", type=click.Choice(["auto", "random", "uncertainty"]), default="auto", show_default=True,
              help="random: batches of consecutive rows in shuffled order; uncertainty: crowded old vectors first; "
                   "auto: uncertainty while rows are read through an adapter's fitted map, else random")
@click.option("--batch-size", type=int, default=64, show_default=True)
@gate_options("check them at 10 %, 50 % and 100 % of rows backfilled, and stop if the gallery serves them worse than "
              "when this run began")
@engine_options
@click.option("--json", "as_json", is_flag=True)
@friendly
def index_backfill(directory: str, engine: dict[str, Any], as_json: bool, **opts: Any) -> None:
    """Re-embed rows with the serving model, one atomic commit per batch; stop any time, rerun to resume."""
    from compatret.index.backfill import backfill
    from compatret.index.service import Service

    ray = ray_options(engine, opts["batch_size"])

    def run_to(fraction: float | None, limit: int | None = None) -> Any:
        return backfill(Service.open(directory), limit, fraction, opts["order"], opts["batch_size"], progress=not as_json, ray=ray)

    if gate_files(opts["gate_queries"], opts["qrels"]):
        _gated_backfill(directory, run_to, opts, as_json)
        return
    report = run_to(opts["fraction"], opts["limit"])
    emit(report.to_dict(), as_json, _backfill_text(report))
    if report.stopped:
        sys.exit(130)


def _backfill_text(report: Any) -> str:
    verb = "stopped after" if report.stopped else "re-embedded"
    text = (f"{verb} {report.done} rows with {report.serving} ({report.rows_per_s:.1f} rows/s); "
            f"{report.remaining} rows still carry older vectors")
    if report.skipped:
        text += f"\nskipped {report.skipped} rows with no text or image to re-embed, e.g. {', '.join(report.skipped_examples)}"
    return text


def _gated_backfill(directory: str, run_to: Callable[..., Any], opts: dict[str, Any], as_json: bool) -> None:
    """Backfill checkpoint by checkpoint; the steps on stdout, and one error line if the gate stopped it."""
    from compatret.evaluation.regression import BackfillGate, gated_backfill

    if opts["limit"] is not None:
        raise CompatretError("--gate checks at shares of rows: give --fraction, not --limit")
    cap = 1.0 if opts["fraction"] is None else opts["fraction"]
    if not 0 < cap <= 1:
        raise CompatretError(f"--fraction must be in (0, 1], got {cap}")
    gate = BackfillGate.open(directory, opts["gate_queries"], opts["qrels"], opts["max_drop"], opts["max_flips"])
    steps = gated_backfill(gate, run_to, cap)
    lines = []
    for step in steps:
        line = f"{100 * step['fraction']:.0f} %: {_backfill_text_short(step['report'])}"
        if "gate" in step:
            g, c = step["gate"], step["gate"]["change"]
            line += (f"; nDCG@10 {g['ndcg_at_10_before']:.4f} -> {g['ndcg_at_10_now']:.4f} ({c['mean']:+.4f}, 95% CI "
                     f"[{c['low']:+.4f}, {c['high']:+.4f}]), flips {100 * g['negative_flip_rate']:.1f}%: {g['verdict']}")
        lines.append(line)
    emit({"steps": steps}, as_json, "\n".join(lines))
    last = steps[-1]
    if last["report"]["stopped"]:
        sys.exit(130)
    if "gate" in last and last["gate"]["verdict"] == "undecided":
        raise CompatretError(f"gate cannot decide at {100 * last['fraction']:.0f} % of rows backfilled: {last['gate']['reason']}; "
                             f"backfill stopped. `compatret index rollback {directory} --to {gate.start_version}` restores the gallery as it was")
    if "gate" in last and not last["gate"]["passed"]:
        raise CompatretError(f"gate: at {100 * last['fraction']:.0f} % of rows backfilled the gallery serves the gate queries worse than "
                             f"when this run began; backfill stopped. `compatret index rollback {directory} --to {gate.start_version}` "
                             "restores the gallery as it was; a rerun goes on, and its gate compares with the gallery as it then is")


def _backfill_text_short(report: dict[str, Any]) -> str:
    return f"re-embedded {report['done']} rows, {report['remaining']} still older"


@index.command("verify")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--repair", is_flag=True, help="Rebuild the search cache from the table.")
@click.option("--json", "as_json", is_flag=True)
@friendly
def index_verify(directory: str, repair: bool, as_json: bool) -> None:
    """Compare the search cache with the table (ids, row versions, vector hashes, lineage); exit 1 on a mismatch."""
    from compatret.index.gallery import Gallery
    from compatret.index.verify import verify

    report = verify(Gallery.open(directory), repair=repair)
    head = (f"table version {report.table_version}: {report.rows} rows in {report.fragments} fragments, "
            f"{report.cached_fragments} cached" + (" (cache rebuilt)" if report.repaired else ""))
    body = "ok: the cache matches the table" if report.ok else "\n".join(f"MISMATCH {m}" for m in report.mismatches)
    emit(report.to_dict(), as_json, f"{head}\n{body}")
    if not report.ok:
        sys.exit(1)


@index.command("history")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--every-version", is_flag=True, help="One line per table version (default: a backfill's batches as one line).")
@click.option("--json", "as_json", is_flag=True)
@friendly
def index_history(directory: str, every_version: bool, as_json: bool) -> None:
    """Table versions: time, rows, serving model, what changed (a backfill's batches as one entry)."""
    from compatret.index.history import grouped, history
    from compatret.index.service import Service

    rows = history(Service.open(directory))
    rows = rows if every_version else grouped(rows)
    spans = [str(r["version"]) + (f"..{r['to_version']}" if r.get("to_version", r["version"]) != r["version"] else "") for r in rows]
    served = [r["serving"] or "-" for r in rows]
    wide = (max(map(len, spans), default=1), max(map(len, served), default=1), max((len(str(r["rows"])) for r in rows), default=1))
    text = "\n".join(f"{span:>{wide[0]}}  {r['time']}  {r['rows']:>{wide[2]}} rows  serving {model:<{wide[1]}}  {r['change']}"
                     for span, model, r in zip(spans, served, rows))
    emit(rows, as_json, text)


@index.command("rollback")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--to", "to", type=int, required=True, help="Table version to restore (see `index history`).")
@click.option("--json", "as_json", is_flag=True)
@friendly
def index_rollback(directory: str, to: int, as_json: bool) -> None:
    """Restore rows, vectors and serving model of an earlier version (as a new version; nothing is lost)."""
    from compatret.index.history import rollback
    from compatret.index.service import Service

    service = Service.open(directory)
    meta = rollback(service, to)
    emit({"restored": to, "serving": meta.serving.id, "table_version": service.gallery.version}, as_json,
         f"restored version {to}: serving {meta.serving.id}, now table version {service.gallery.version}")


@index.command("prune")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--older-than-days", type=float, default=7.0, show_default=True, help="Delete versions older than this.")
@click.option("--json", "as_json", is_flag=True)
@friendly
def index_prune(directory: str, older_than_days: float, as_json: bool) -> None:
    """Compact the table and delete old versions (the only command that forgets history)."""
    import datetime as dt

    from compatret.index.history import prune
    from compatret.index.service import Service

    if not (math.isfinite(older_than_days) and 0 <= older_than_days <= 365_000):
        raise CompatretError("--older-than-days must be a number of days from 0 to 365000")
    out = prune(Service.open(directory), dt.timedelta(days=older_than_days))
    emit(out, as_json, f"versions: {out['versions_before']} -> {out['versions_after']}")


@main.command("serve")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--refresh-seconds", type=float, default=1.0, show_default=True, help="Max age of the query snapshot.")
@click.option("--api-key-file", type=click.Path(dir_okay=False), help="Keys, one per line: `read KEY` or `write KEY` (also $COMPATRET_API_KEY = write, $COMPATRET_READ_API_KEY = read).")
@click.option("--models-dir", type=click.Path(file_okay=False), help="Folder whose model folders clients may name (by folder name) in `model`.")
@click.option("--max-body-mb", type=float, default=16.0, show_default=True, help="Largest request body accepted.")
@click.option("--inference-slots", type=int, default=2, show_default=True, help="Query encodings run at once (per worker).")
@click.option("--workers", type=int, default=1, show_default=True, help="Server processes; each holds its own search kernels.")
@click.option("--fingerprint-minutes", type=float, default=10.0, show_default=True,
              help="A serving model behind an endpoint: re-check its fingerprint this often (0: at start only).")
@click.option("--insecure", is_flag=True, help="Allow a non-loopback --host without API keys.")
@friendly
def serve(directory: str, host: str, port: int, workers: int, insecure: bool, **app: Any) -> None:
    """Serve a gallery over HTTP (OpenAPI schema at /docs and /openapi.json)."""
    import uvicorn

    from compatret.index.auth import ApiKeys, is_loopback
    from compatret.index.gallery import Gallery
    from compatret.index.server import SERVE_CONFIG_ENV

    keys = ApiKeys.load(app["api_key_file"])
    if not keys.enabled and not is_loopback(host) and not insecure:
        raise CompatretError(f"refusing to serve on {host} without API keys: give --api-key-file or $COMPATRET_API_KEY (or --insecure)")
    models_dir = app["models_dir"]
    if models_dir is not None and not Path(models_dir).is_dir():
        raise CompatretError(f"--models-dir {models_dir} is not a folder")
    if app["max_body_mb"] <= 0 or app["inference_slots"] < 1 or workers < 1:
        raise CompatretError("--max-body-mb must be > 0, --inference-slots and --workers >= 1")
    gallery = Gallery.open(directory)  # one clear error for a missing gallery, before the server starts
    if not (math.isfinite(app["fingerprint_minutes"]) and app["fingerprint_minutes"] >= 0):
        raise CompatretError("--fingerprint-minutes must be >= 0")
    from compatret.encoders.registry import check_endpoint

    check_endpoint(gallery.meta.serving_source, "serve")  # a serving model behind an endpoint must still be the one registered
    os.environ[SERVE_CONFIG_ENV] = json.dumps({  # what each worker's create_app gets (app_from_env)
        "directory": str(Path(directory).resolve()), "refresh_seconds": app["refresh_seconds"], "api_key_file": app["api_key_file"],
        "models_dir": models_dir and str(Path(models_dir).resolve()), "max_body_bytes": int(app["max_body_mb"] * 2**20),
        "inference_slots": app["inference_slots"], "fingerprint_minutes": app["fingerprint_minutes"]})
    click.echo(f"serving {directory} on http://{host}:{port}: the console at /, the API at /docs", err=True)
    # uvicorn says when it listens ("Uvicorn running on ..."); no line per request: that would cost the queries time
    uvicorn.run("compatret.index.server:app_from_env", factory=True, workers=workers, host=host, port=port, log_level="info", access_log=False)


@main.command("query")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--text", "texts", multiple=True, help="A text query (repeatable).")
@click.option("--queries", type=click.Path(), help="Query file: .txt (one per line), .jsonl or .parquet.")
@click.option("--vectors", type=click.Path(), help="Query vectors, .npy of shape (n, dim) in --model's space.")
@click.option("-k", "k", type=int, default=10, show_default=True)
@click.option("--model", help="Query model (default: the serving model); any descendant of the gallery's model.")
@click.option("--payload", is_flag=True, help="Include stored text/metadata of each hit.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per query: ids and scores, best first.")
@friendly
def query(directory: str, texts: tuple[str, ...], queries: str | None, vectors: str | None, k: int, model: str | None, payload: bool, as_json: bool) -> None:
    """Search a gallery: queries are embedded with the query model and mapped into the gallery's space."""
    from compatret.data.items import read_array, read_query_rows
    from compatret.index.service import Service

    given = sum(bool(x) for x in (texts, queries, vectors))
    if given != 1:
        raise CompatretError("give exactly one of --text, --queries or --vectors")
    service = Service.open(directory)
    if service.gallery.count() == 0:
        raise CompatretError(f"the gallery {directory} is empty: nothing to search yet; add rows with "
                             f"`compatret index add {directory} --items FILE`")
    if vectors is not None:
        results = service.query(vectors=read_array(vectors, "query vectors"), model=model, k=k, include_payload=payload)
        asked: list[tuple[str | None, Any]] = [(None, None)] * len(results)
        labels = [f"vector {i}" for i in range(len(results))]
    else:
        asked = [(None, t) for t in texts] if texts else read_query_rows(queries)  # type: ignore[arg-type]
        qs = [q for _, q in asked]
        is_image = service.meta.modality == "image"
        results = service.query(images=qs, model=model, k=k, include_payload=payload) if is_image else service.query(texts=qs, model=model, k=k, include_payload=payload)
        labels = [q if isinstance(q, str) else f"image {i}" for i, q in enumerate(qs)]
    if as_json:  # each line says which query it answers: its place in the input, its id and text when known
        for n, ((qid, q), r) in enumerate(zip(asked, results)):
            said = {"query_index": n, **({"query_id": qid} if qid is not None else {}), **({"query_text": q} if isinstance(q, str) else {})}
            say(json.dumps({**said, **r.to_dict()}))
        return
    for label, r in zip(labels, results):
        say(f"# {label}")
        for rank, (i, s) in enumerate(zip(r.ids, r.scores), 1):
            extra = ""
            if r.payloads is not None:  # title first (it names the item), then the start of its text
                p = r.payloads[rank - 1]
                shown = " | ".join(x for x in (p.get("title"), (p.get("text") or "")[:120]) if x)
                extra = f"  [{p.get('model_version', '?')}]  {shown}" if shown else f"  [{p.get('model_version', '?')}]"
            say(f"{rank:>3}  {s:.4f}  {i}{extra}")


@main.command("quickstart")
@click.option("--workdir", type=click.Path(file_okay=False), default="indexes/quickstart", show_default=True,
              help="Empty folder for the models and galleries it makes.")
@click.option("--data", type=click.Path(file_okay=False), help="Image folder with train.parquet/test.parquet (default: bundled digits).")
@click.option("--json", "as_json", is_flag=True)
@friendly
def quickstart(workdir: str, data: str | None, as_json: bool) -> None:
    """Train v1, build its gallery, train a compatible v2, upgrade without backfill, and compare."""
    from compatret.quickstart import run_quickstart

    if data is not None and not Path(data).is_dir():
        raise CompatretError(f"--data {data} is not a folder")
    report = run_quickstart(workdir, data=data, progress=not as_json)
    if as_json:
        say(json.dumps(report.to_dict()))
        return
    say(report.table())
    say(f"\nupgrade v1 -> v2-bct took {report.upgrade_seconds * 1000:.1f} ms and re-embedded nothing")
    say(f"upgrade to v2-independent refused: {report.refused}")
    say(f"models and galleries in {workdir}; total {report.seconds:.0f} s")


# sub-command groups live in compatret/commands (their heavy imports happen inside the commands)
from compatret.commands.adapt import adapt  # noqa: E402
from compatret.commands.evaluate import eval_group  # noqa: E402
from compatret.commands.model import model_group  # noqa: E402
from compatret.commands.regression import regression  # noqa: E402
from compatret.commands.retrieval_eval import retrieval  # noqa: E402
from compatret.commands.retriever import retriever  # noqa: E402
from compatret.commands.train import train  # noqa: E402

train.add_command(retriever)
eval_group.add_command(retrieval)
eval_group.add_command(regression)
main.add_command(train)
main.add_command(adapt)
main.add_command(model_group)
main.add_command(eval_group, name="eval")
