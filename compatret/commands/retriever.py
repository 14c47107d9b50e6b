"""`compatret train retriever`: STAR, ADORE and compatible (BCT, BT², OCA) text retrievers."""

from __future__ import annotations

import json

import click

from compatret.commands.output import friendly
from compatret.train.text.config import METHODS


@click.command("retriever")
@click.option("--method", type=click.Choice(METHODS), required=True,
              help="star: independent baseline; adore: query tower only (gallery untouched); bct: same space; bt2/oca: old space in a prefix plus --extra-dims.")
@click.option("--old", required=True, help="The model of the gallery's vectors (alias or model folder).")
@click.option("--gallery", required=True, type=click.Path(file_okay=False), help="Gallery of the old model: old item vectors and hard negatives come from it.")
@click.option("--train-data", required=True, type=click.Path(file_okay=False), help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv).")
@click.option("--out", type=click.Path(file_okay=False), help="Model folder (default: indexes/models/<method>); holds checkpoints while training.")
@click.option("--init", help="Start weights (default: --old); e.g. minilm-l6 to train towards a frozen minilm-l3 gallery.")
@click.option("--split", default="train", show_default=True, help="Qrels split to train on.")
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--lr", type=float, default=2e-5, show_default=True)
@click.option("--extra-dims", type=int, default=64, show_default=True, help="Extension dims for bt2/oca.")
@click.option("--hard-negatives", type=int, default=1, show_default=True, help="Static hard negatives per query (star/bct/bt2/oca).")
@click.option("--align-docs", type=int, default=0, show_default=True,
              help="Fit a linear map from --init's space into the old one on this many gallery documents first (cross-architecture).")
@click.option("--max-seq-length", type=int, default=256, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-steps", type=int, help="Stop after this many steps (default: all epochs).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@friendly
def retriever(method: str, old: str, gallery: str, train_data: str, out: str | None, init: str | None, split: str,
              epochs: int, batch_size: int, lr: float, extra_dims: int, hard_negatives: int, align_docs: int, max_seq_length: int,
              seed: int, max_steps: int | None, as_json: bool) -> None:
    """Fine-tune a text retriever on hard negatives; rerun the same command to resume after an interruption."""
    from compatret.config import index_home
    from compatret.train.text.config import RetrieverConfig
    from compatret.train.text.trainer import LOG_FILE, train_retriever
    from compatret.versions import ModelVersion

    cfg = RetrieverConfig(
        method=method, old=old, gallery=gallery, train_data=train_data, out=out or str(index_home() / "models" / method),
        init=init, split=split, epochs=epochs, batch_size=batch_size, lr=lr, extra_dims=extra_dims, seed=seed,
        max_steps=max_steps, hard_negatives=hard_negatives, align_docs=align_docs, max_seq_length=max_seq_length,
    )
    folder = train_retriever(cfg, progress=not as_json)
    version = ModelVersion.load(folder)
    log = json.loads((folder / LOG_FILE).read_text())
    result = {"model": str(folder), "version": version.id, "dim": version.dim, "compat": version.compat.to_dict(),
              "parent": version.parent.id if version.parent else None, "steps": log["steps"], "train_seconds": log["train_seconds"]}
    if as_json:
        click.echo(json.dumps(result))
        return
    rule = str(version.compat)
    click.echo(f"saved {version.id} to {folder}: {version.dim}-d, "
               + (f"{rule} with {result['parent']}" if version.parent else "independent (no parent: a new gallery is needed)")
               + f"; {log['steps']} steps in {log['train_seconds'] / 60:.1f} min")
