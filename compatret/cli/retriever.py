"""`compatret train retriever`: STAR, ADORE and compatible (BCT, BT², OCA) text retrievers."""

from __future__ import annotations

import json
from typing import Any

import click

from compatret.cli.output import friendly, say
from compatret.train.text.config import METHODS, RetrieverConfig


def _default(name: str) -> str:
    return f" [default: {RetrieverConfig.model_fields[name].default}]"


@click.command("retriever")
@click.option(
    "--recipe",
    type=click.Path(dir_okay=False),
    help="TOML recipe with the settings below (e.g. training/scifact_adore.toml); flags given here override it.",
)
@click.option(
    "--method",
    type=click.Choice(METHODS),
    help="star: independent baseline; adore: query tower only (gallery untouched); bct: same space; bt2/oca: old space in a prefix plus --extra-dims.",
)
@click.option("--old", help="The model of the gallery's vectors (alias or model folder).")
@click.option(
    "--gallery", type=click.Path(file_okay=False), help="Gallery of the old model: old item vectors and hard negatives come from it."
)
@click.option("--train-data", type=click.Path(file_okay=False), help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv).")
@click.option(
    "--out", type=click.Path(file_okay=False), help="Model folder (default: indexes/models/<method>); holds checkpoints while training."
)
@click.option("--init", help="Start weights (default: --old); e.g. minilm-l6 to train towards a frozen minilm-l3 gallery.")
@click.option("--split", help="Qrels split to train on." + _default("split"))
@click.option("--epochs", type=int, help=_default("epochs"))
@click.option("--batch-size", type=int, help=_default("batch_size"))
@click.option("--lr", type=float, help=_default("lr"))
@click.option("--extra-dims", type=int, help="Extension dims for bt2/oca." + _default("extra_dims"))
@click.option("--hard-negatives", type=int, help="Static hard negatives per query (star/bct/bt2/oca)." + _default("hard_negatives"))
@click.option("--compat-weight", type=float, help="Weight of the compatibility term (bct/bt2/oca)." + _default("compat_weight"))
@click.option(
    "--align-docs",
    type=int,
    help="Fit a linear map from --init's space into the old one on this many gallery documents first (cross-architecture)."
    + _default("align_docs"),
)
@click.option(
    "--max-seq-length", type=int, help="Tokens per text while training (served at the model's full length)." + _default("max_seq_length")
)
@click.option("--seed", type=int, help=_default("seed"))
@click.option("--max-steps", type=int, help="Stop after this many steps (default: all epochs).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@friendly
def retriever(recipe: str | None, as_json: bool, **settings: Any) -> None:
    """Fine-tune a text retriever on hard negatives; rerun the same command to resume after an interruption."""
    from compatret.core.lineage import ModelVersion
    from compatret.train.text.trainer import LOG_FILE
    from compatret.trainers import train_text

    folder = train_text(recipe, progress=not as_json, **settings)
    version = ModelVersion.load(folder)
    log = json.loads((folder / LOG_FILE).read_text())
    result = {
        "model": str(folder),
        "version": version.id,
        "dim": version.dim,
        "compat": version.compat.to_dict(),
        "parent": version.parent.id if version.parent else None,
        "steps": log["steps"],
        "train_seconds": log["train_seconds"],
    }
    if as_json:
        say(json.dumps(result))
        return
    rule = str(version.compat)
    say(
        f"saved {version.id} to {folder}: {version.dim}-d, "
        + (f"{rule} with {result['parent']}" if version.parent else "independent (no parent: a new gallery is needed)")
        + f"; {log['steps']} steps in {log['train_seconds'] / 60:.1f} min"
    )
