"""`compatret model`: bring models from elsewhere into compatret's model folders."""

from __future__ import annotations

import click

from compatret.commands.output import emit, friendly


@click.group("model")
def model_group() -> None:
    """Model folders: import a sentence-transformers model so galleries, adapt and train can use it."""


@model_group.command("import")
@click.argument("source", type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Model folder to write (new or empty).")
@click.option("--id", "model_id", help="The model's id in galleries' lineage [default: the source folder's name].")
@click.option("--json", "as_json", is_flag=True)
@friendly
def import_model(source: str, out_dir: str, model_id: str | None, as_json: bool) -> None:
    """Copy a sentence-transformers folder (as saved by `model.save` or downloaded from the hub) into
    a compatret model folder with its version record."""
    from compatret.encoders.importing import import_sentence_transformers

    version = import_sentence_transformers(source, out_dir, model_id)
    emit({"model": out_dir, "model_id": version.id, "dim": version.dim}, as_json,
         f"wrote {out_dir}: model {version.id!r}, {version.dim}-d text; use it as --model {out_dir}")
