"""`compatret eval compat`: the compatibility matrix of a sequence of models, with ECC, AC and AM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from compatret.cli.output import emit, friendly
from compatret.core.errors import CompatretError


@click.group("eval")
def eval_group() -> None:
    """Evaluate models: compatibility between versions."""


@eval_group.command("compat")
@click.option("--models", "first", multiple=True, help="Model folders, oldest first (the rest may follow as arguments).")
@click.argument("more", nargs=-1, metavar="[MODEL_DIR]...", type=click.Path(file_okay=False))
@click.option("--data", required=True, help="Image folder with <split>.parquet, or a data set name under COMPATRET_DATA.")
@click.option("--split", default="test", show_default=True)
@click.option("--per-class", type=int, help="Use only the first N images of each class (quick checks).")
@click.option("--raw-unrelated", is_flag=True, help="Score pairs outside a lineage on raw vectors of equal dim, instead of refusing them.")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="runs/eval-compat",
    show_default=True,
    help="Folder for compat.json and the heatmaps.",
)
@click.option("--device", type=click.Choice(["cpu", "cuda"]))
@click.option("--json", "as_json", is_flag=True, help="Print compat.json to stdout.")
@friendly
def eval_compat(
    first: tuple[str, ...], more: tuple[str, ...], raw_unrelated: bool, out: str, device: str | None, as_json: bool, **images: Any
) -> None:
    """The compatibility matrix M(query model, gallery model): top-1 and mAP (leave-one-out, cosine) for every pair gallery <= query."""
    from compatret.core.config import dataset
    from compatret.data.images import load_parquet_split
    from compatret.evaluation.compat_matrix import compat_matrix, write_compat_report

    models = [*first, *more]
    if not models:
        raise CompatretError("give the model folders with --models, oldest first")
    data, per_class = images["data"], images["per_class"]  # which images: --data, --split, --per-class
    if per_class is not None and per_class < 1:
        raise CompatretError("--per-class must be >= 1")
    split = load_parquet_split(Path(data) if Path(data).is_dir() else dataset(data), images["split"])
    if per_class:
        split = split.head_per_class(per_class)
    result = compat_matrix(models, split, raw_unrelated=raw_unrelated, device=device, progress=not as_json)
    paths = write_compat_report(result, out)
    report = result.to_dict()
    emit(report, as_json, _table(report) + f"\nwrote {', '.join(str(p) for p in paths.values())}")


def _table(report: dict) -> str:
    ids = [m["id"] for m in report["models"]]
    width = max(len(i) for i in ids) + 2
    lines = []
    for score in ("top1", "map"):
        lines.append(f"{score} (%), rows: query model, columns: gallery model, {report['queries']} queries")
        lines.append(" " * width + "".join(f"{i:>{width}}" for i in ids))
        for qid, row in zip(ids, report[score]):
            cells = "".join(f"{'-' if x is None else f'{x:.1f}':>{width}}" for x in row)
            lines.append(f"{qid:<{width}}{cells}")
        am = report["am"][score]
        lines.append(f"AC {report['ac'][score]:.3f}   AM {'undefined (refused pairs)' if am is None else f'{am:.2f}'}\n")
    for p in report["pairs"]:
        if "ecc_top1" in p:
            lines.append(f"{p['query']} -> {p['gallery']}: ECC top-1 {p['ecc_top1']}, mAP {p['ecc_map']} ({p['compared']})")
    return "\n".join(lines)
