"""`compatret adapt`: upgrade to a model you did not train, through a map fitted on the gallery's rows."""

from __future__ import annotations

from typing import Any

import click

from compatret.cli.output import emit, friendly

DEFAULT_BUDGET_S = 180.0  # compatret.adapt.build.DEFAULT_BUDGET_S, kept here so --help does not import the fitting code


@click.command("adapt")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.option("--model", "new_model", required=True, help="The new model: an alias (minilm-l6, minilm-l3) or a model folder.")
@click.option(
    "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder to write the adapted model to (new or empty)."
)
@click.option(
    "--direction",
    type=click.Choice(["gallery", "query", "auto"]),
    default="gallery",
    show_default=True,
    help="gallery: stored vectors are mapped into the new model's space (then backfill to native); "
    "query: the new model's vectors are mapped into the stored space, which stays; auto: the better of the two.",
)
@click.option(
    "--kind",
    type=click.Choice(["auto", "procrustes", "affine", "mlp"]),
    default="auto",
    show_default=True,
    help="The map; auto picks the best on pseudo-queries taken out of the gallery's rows, scored as the gallery would serve them.",
)
@click.option(
    "--sample",
    type=int,
    default=None,
    help="Rows (with payloads) embedded by the new model to fit on [default: all, at most 20,000, within --budget].",
)
@click.option(
    "--budget",
    type=float,
    default=DEFAULT_BUDGET_S,
    show_default=True,
    help="Seconds for embedding, fitting and estimating (writing the folder comes after); the clock is read before "
    "every step of about 2 s of encoder calls.",
)
@click.option("--force", is_flag=True, help="Write the adapter even when it is estimated worse than staying on the old model.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly
def adapt(directory: str, new_model: str, out_dir: str, as_json: bool, **settings: Any) -> None:
    """Fit a map between the gallery's model and --model on the gallery's own rows; write a model
    folder that `index upgrade` accepts."""
    import compatret

    log = None if as_json else (lambda line: click.echo(line, err=True))
    report = compatret.open(directory).adapt(new_model, out_dir, progress=not as_json, log=log, **settings)
    est = report["estimate"]
    verdict = (
        "no estimate against staying: written unchecked (--force)"
        if est is None
        else f"estimated against staying on {report['from']}: nDCG@10 {est['stay']:.3f} -> {est['adapted']:.3f} on {est['queries']} pseudo-queries, "
        f"change {est['change']:+.3f} [{est['low']:+.3f}, {est['high']:+.3f}]"
        + (" (worse: written because of --force)" if report["forced"] else "")
    )
    emit(
        report,
        as_json,
        f"wrote {report['model']} ({report['model_id']}): {report['kind']} map, direction {report['direction']}, "
        f"{report['sample']} pairs, {report['seconds']:.0f} s\n{verdict}\n"
        f"next: compatret index upgrade {directory} --model {report['model']}",
    )
