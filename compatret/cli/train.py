"""`compatret train image --recipe FILE ...`: recipes, parents first, resumable, CPU or GPU chosen at run time."""

from __future__ import annotations

import click

from compatret.cli.output import emit, friendly
from compatret.core.errors import CompatretError


@click.group()
def train() -> None:
    """Train compatible models from recipes (training/*.toml)."""


@train.command("image")
@click.option(
    "--recipe",
    "recipe_files",
    required=True,
    multiple=True,
    type=click.Path(dir_okay=False),
    help="TOML recipe, e.g. training/tinyimagenet100_bt2.toml; repeat it to train a family (parents first).",
)
@click.option("--out", type=click.Path(file_okay=False), help="Model folder (default: the recipe's out; one recipe only).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Default: cuda when available, else cpu.")
@click.option("--epochs", type=int, help="Override the recipes' epochs.")
@click.option("--jobs", type=int, default=1, show_default=True, help="Recipes trained at once, each in its own process.")
@click.option("--json", "as_json", is_flag=True, help="Print the trained version(s) as JSON (no progress bar).")
@friendly
def train_image(recipe_files: tuple[str, ...], out: str | None, device: str | None, epochs: int | None, jobs: int, as_json: bool) -> None:
    """Train image models from recipes; rerun the same command to resume after an interruption."""
    from compatret.trainers import train_image as run

    if out is not None and len(recipe_files) > 1:
        raise CompatretError("--out names one model folder: give it with a single --recipe")
    records, lines = [], []
    for outcome in run(recipe_files, out, epochs, device, jobs, progress=not as_json):
        v = outcome.version
        rule = str(v.compat)
        verb = "already trained, nothing to do:" if outcome.skipped else "trained"
        parent = f", parent {v.parent.id} [{rule}]" if v.parent else ""
        records.append({"version": v.to_dict(), "out": str(outcome.out), "skipped": outcome.skipped})
        lines.append(f"{verb} {v.id} ({v.method}, {v.dim}-d{parent}) in {outcome.out}")
    from compatret.train.image import distributed

    if distributed.ranks().main:  # under torchrun: one report, from the process that wrote the folders
        emit(records[0] if len(records) == 1 else records, as_json, "\n".join(lines))
