"""`compatret eval retrieval`: nDCG@10, MRR@10, Recall@100 of one (query model, gallery) pair."""

from __future__ import annotations

import json

import click

from compatret.cli.output import friendly, say


@click.command("retrieval")
@click.option("--query-model", help="Model that embeds the queries (default: the gallery's serving model).")
@click.option("--gallery", required=True, type=click.Path(file_okay=False), help="A compatret gallery of the corpus.")
@click.option("--data", required=True, type=click.Path(file_okay=False), help="BEIR folder with queries.jsonl and qrels/<split>.tsv.")
@click.option("--split", default="test", show_default=True)
@click.option(
    "--ignore-lineage", is_flag=True, help="Search even an incompatible model's vectors as if compatible (to measure the damage)."
)
@click.option("--json", "as_json", is_flag=True)
@friendly
def retrieval(query_model: str | None, gallery: str, data: str, split: str, ignore_lineage: bool, as_json: bool) -> None:
    """Score queries of --query-model against the gallery's stored vectors, with ranx."""
    from compatret.data.beir import load_beir
    from compatret.engine.runs import evaluate_pair
    from compatret.engine.sharded import open_gallery

    service = open_gallery(gallery)  # fails early, before the data is read (one gallery or a sharded one)
    scores = evaluate_pair(query_model, gallery, load_beir(data, splits=(split,)), split, unchecked=ignore_lineage)
    rows = service.rows_by_version()  # the models whose vectors the gallery holds now (a backfill changes them)
    pair = {
        "query_model": query_model or service.meta.serving.id,
        "gallery_model": next(iter(rows)) if len(rows) == 1 else "mixed",
        "gallery_rows": rows,
        "split": split,
    }
    if as_json:
        say(json.dumps({**pair, **scores}))
        return
    held = pair["gallery_model"] if len(rows) == 1 else ", ".join(f"{v}: {n}" for v, n in rows.items())
    say(f"{pair['query_model']} queries / gallery of {held} rows ({split}): " + "  ".join(f"{k} {v:.4f}" for k, v in scores.items()))
