"""Rolling a new model out: `index gate`, `index upgrade` (gated, or refused with an adapter's estimate) and `index backfill`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from compatret.cli import sharded
from compatret.cli.options import engine_options, ray_options
from compatret.cli.output import emit, friendly
from compatret.core.errors import CompatretError


@click.command("gate")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--queries", required=True, type=click.Path(dir_okay=False), help="Queries (.jsonl, `_id` and `text`).")
@click.option("--qrels", required=True, type=click.Path(dir_okay=False), help="Their judgements (BEIR qrels TSV).")
@click.option("--json", "as_json", is_flag=True)
@friendly
def index_gate(directory: str, queries: str, qrels: str, as_json: bool) -> None:
    """Store the queries that gate upgrades over HTTP (POST /upgrade with "gate": true) beside the gallery."""
    from compatret.engine.gate import store_gate
    from compatret.store.gallery import Gallery

    Gallery.open(directory)
    folder = store_gate(directory, queries, qrels)
    emit({"gate": str(folder)}, as_json, f"stored the gate queries in {folder}")


def gate_options(purpose: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--gate, --qrels, --max-drop, --max-flips: the regression gate's options (upgrade, backfill)."""
    options = [
        click.option("--gate", "gate_queries", type=click.Path(dir_okay=False), help=f"Queries (.jsonl, `_id` and `text`): {purpose}."),
        click.option("--qrels", type=click.Path(dir_okay=False), help="Judgements for --gate (BEIR qrels TSV)."),
        click.option(
            "--max-drop",
            type=float,
            default=0.005,
            show_default=True,
            help="Fail when the lower 95% bound of the nDCG@10 change is below minus this.",
        ),
        click.option(
            "--max-flips",
            type=float,
            default=0.05,
            show_default=True,
            help="Fail when more than this fraction of queries lose their relevant top-10 hit.",
        ),
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


@click.command("upgrade")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--model", required=True, help="The new model: its lineage must reach the gallery's model.")
@gate_options("check the new model on them first: refuse the upgrade if it serves them worse")
@click.option("--json", "as_json", is_flag=True)
@friendly
def index_upgrade(
    directory: str, model: str, gate_queries: str | None, qrels: str | None, max_drop: float, max_flips: float, as_json: bool
) -> None:
    """Make a compatible model the serving model in O(1): nothing is re-embedded."""
    import time

    import compatret
    from compatret.engine.results import NeedsAdapter
    from compatret.engine.service import Service

    if sharded.is_sharded(directory):
        gate = None
        if gate_files(gate_queries, qrels):
            from compatret.engine.gate import gate_check

            gate = gate_check(directory, model, gate_queries, qrels, max_drop, max_flips)  # type: ignore[arg-type]
        sharded.upgrade(sharded.open_sharded(directory), model, as_json, gate)
        return
    gallery = compatret.open(directory)
    service: Service = gallery.engine  # type: ignore[assignment]  # one gallery here: its plan is reported below
    before = gallery.serving
    gate = None
    if gate_files(gate_queries, qrels):
        from compatret.engine.gate import gate_check

        gate = gate_check(directory, model, gate_queries, qrels, max_drop, max_flips)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    try:
        meta = gallery.upgrade(model, gate=gate)
    except NeedsAdapter as exc:
        raise exc.for_command(directory, model) from None
    dt = time.perf_counter() - t0
    plan = service.plan()
    read_as = service.rows_by_plan()  # as `index info` says it: the stored rows, group by group
    adapter = adapter_estimate(model, directory)
    out = {
        "previous": before,
        "serving": meta.serving.id,
        "vector_model": meta.vector_model.id,
        "query_dims": plan.dims,
        "transforms": len(plan.gallery_transforms),
        "rows_by_plan": read_as,
        "seconds": dt,
        "gate": gate,
        "adapter_estimate": adapter[0] if adapter else None,
    }
    how = ", ".join(f"{n} {READ_AS[k]}" for k, n in read_as.items()) or "no rows stored yet"
    emit(
        out,
        as_json,
        f"serving {meta.serving.id} (was {before}); nothing re-embedded; stored rows: {how}; {dt * 1000:.1f} ms"
        + (f"\n{adapter[1]}" if adapter else ""),
    )


READ_AS = {
    "native": "are its own vectors",
    "same space": "are read as they are (same space)",
    "shared dims": "are read in their shared dims",
    "mapped": "are mapped into its space by a fitted transform",
}


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
    if not isinstance(est, dict) or not all(
        isinstance(est.get(k), (int, float)) for k in ("stay", "adapted", "change", "low", "high", "queries")
    ):
        return None  # not written by `compatret adapt` (or by an older one): nothing to show
    where = record.get("gallery")
    elsewhere = where and Path(where) != Path(directory).resolve()
    line = (
        f"adapter estimate (compatret adapt, {'on ' + where if elsewhere else 'on this gallery'}): staying on {record.get('from')} "
        f"{est['stay']:.3f} vs adapted {est['adapted']:.3f} nDCG@10 on {est['queries']} pseudo-queries, change {est['change']:+.3f} "
        f"[{est['low']:+.3f}, {est['high']:+.3f}]"
        + (" - estimated worse, written with --force" if record.get("forced") and est["change"] < 0 else "")
    )
    return est, line


@click.command("backfill")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--limit", type=int, help="Re-embed at most N rows in this run.")
@click.option("--fraction", type=float, help="Stop once this fraction of all rows carries serving-model vectors.")
@click.option(
    "--order",
    type=click.Choice(["auto", "random", "uncertainty"]),
    default="auto",
    show_default=True,
    help="random: batches of consecutive rows in shuffled order; uncertainty: crowded old vectors first; "
    "auto: uncertainty while rows are read through an adapter's fitted map, else random",
)
@click.option("--batch-size", type=int, default=64, show_default=True)
@gate_options("check them at 10 %, 50 % and 100 % of rows backfilled, and stop if the gallery serves them worse than when this run began")
@engine_options
@click.option("--json", "as_json", is_flag=True)
@friendly
def index_backfill(directory: str, engine: dict[str, Any], as_json: bool, **opts: Any) -> None:
    """Re-embed rows with the serving model, one atomic commit per batch; stop any time, rerun to resume."""
    import compatret

    ray = ray_options(engine, opts["batch_size"])

    def run_to(fraction: float | None, limit: int | None = None) -> Any:
        return compatret.open(directory).backfill(limit, fraction, opts["order"], opts["batch_size"], not as_json, ray=ray)

    if gate_files(opts["gate_queries"], opts["qrels"]):
        _gated_backfill(directory, run_to, opts, as_json)
        return
    report = run_to(opts["fraction"], opts["limit"])
    emit(report.to_dict(), as_json, _backfill_text(report))
    if report.stopped:
        sys.exit(130)


def _backfill_text(report: Any) -> str:
    verb = "stopped after" if report.stopped else "re-embedded"
    text = (
        f"{verb} {report.done} rows with {report.serving} ({report.rows_per_s:.1f} rows/s); "
        f"{report.remaining} rows still carry older vectors"
    )
    if report.skipped:
        text += f"\nskipped {report.skipped} rows with no text or image to re-embed, e.g. {', '.join(report.skipped_examples)}"
    return text


def _gated_backfill(directory: str, run_to: Callable[..., Any], opts: dict[str, Any], as_json: bool) -> None:
    """Backfill checkpoint by checkpoint; the steps on stdout, and one error line if the gate stopped it."""
    from compatret.engine.gate import BackfillGate, gated_backfill

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
            line += (
                f"; nDCG@10 {g['ndcg_at_10_before']:.4f} -> {g['ndcg_at_10_now']:.4f} ({c['mean']:+.4f}, 95% CI "
                f"[{c['low']:+.4f}, {c['high']:+.4f}]), flips {100 * g['negative_flip_rate']:.1f}%: {g['verdict']}"
            )
        lines.append(line)
    emit({"steps": steps}, as_json, "\n".join(lines))
    last = steps[-1]
    if last["report"]["stopped"]:
        sys.exit(130)
    if "gate" in last and last["gate"]["verdict"] == "undecided":
        raise CompatretError(
            f"gate cannot decide at {100 * last['fraction']:.0f} % of rows backfilled: {last['gate']['reason']}; "
            f"backfill stopped. `compatret index rollback {directory} --to {gate.start_version}` restores the gallery as it was"
        )
    if "gate" in last and not last["gate"]["passed"]:
        raise CompatretError(
            f"gate: at {100 * last['fraction']:.0f} % of rows backfilled the gallery serves the gate queries worse than "
            f"when this run began; backfill stopped. `compatret index rollback {directory} --to {gate.start_version}` "
            "restores the gallery as it was; a rerun goes on, and its gate compares with the gallery as it then is"
        )


def _backfill_text_short(report: dict[str, Any]) -> str:
    return f"re-embedded {report['done']} rows, {report['remaining']} still older"
