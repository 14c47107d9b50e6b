"""`compatret train image --recipe FILE`: one recipe, resumable, CPU or GPU chosen at run time."""

from __future__ import annotations

import click

from compatret.commands.output import emit, friendly
from compatret.errors import CompatretError


@click.group()
def train() -> None:
    """Train compatible models from recipes (training/*.toml)."""


@train.command("image")
@click.option("--recipe", required=True, type=click.Path(dir_okay=False), help="TOML recipe, e.g. training/tinyimagenet100_bt2.toml.")
@click.option("--out", type=click.Path(file_okay=False), help="Model folder (default: the recipe's out).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Default: cuda when available, else cpu.")
@click.option("--epochs", type=int, help="Override the recipe's epochs.")
@click.option("--json", "as_json", is_flag=True, help="Print the trained version as JSON (no progress bar).")
@friendly
def train_image(recipe: str, out: str | None, device: str | None, epochs: int | None, as_json: bool) -> None:
    """Train an image model from a recipe; rerun the same command to resume after an interruption."""
    import torch

    from compatret.train.recipe import load_recipe, train_recipe

    job = load_recipe(recipe).with_overrides(out=out, epochs=epochs)
    if device == "cuda" and not torch.cuda.is_available():
        raise CompatretError("--device cuda, but no CUDA device is available")
    outcome = train_recipe(job, device=device, progress=not as_json)
    v = outcome.version
    rule = v.compat.kind + (f"({v.compat.dims})" if v.compat.dims else "")
    verb = "already trained, nothing to do:" if outcome.skipped else "trained"
    parent = f", parent {v.parent.id} [{rule}]" if v.parent else ""
    emit({"version": v.to_dict(), "out": str(outcome.out), "skipped": outcome.skipped}, as_json,
         f"{verb} {v.id} ({v.method}, {v.dim}-d{parent}) in {outcome.out}")
