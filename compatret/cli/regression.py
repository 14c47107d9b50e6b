"""`compatret eval regression`: would a candidate model serve this gallery's queries worse?"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from compatret.cli.output import emit, friendly


@click.command("regression")
@click.option(
    "--gallery", required=True, type=click.Path(file_okay=False), help="The gallery, as it is now (its serving model is the baseline)."
)
@click.option(
    "--candidate", required=True, help="The model that would serve next (alias or model folder); compared through its lineage plan."
)
@click.option(
    "--queries",
    required=True,
    type=click.Path(dir_okay=False),
    help="Queries: .jsonl with `_id` (or `id`) and `text` (BEIR's queries.jsonl).",
)
@click.option("--qrels", type=click.Path(dir_okay=False), help="Judgements (BEIR qrels TSV): adds metrics, intervals and negative flips.")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="runs/regression",
    show_default=True,
    help="Folder for regression.json and the per-query PNG.",
)
@click.option("--json", "as_json", is_flag=True)
@friendly
def regression(gallery: str, candidate: str, queries: str, qrels: str | None, out: str, as_json: bool) -> None:
    """Compare the serving model and a candidate query by query on the gallery as it is now."""
    report = run_regression(gallery, candidate, queries, qrels, Path(out))
    emit(report, as_json, describe(report) + f"\nwrote {out}/regression.json and {out}/per_query.png")


def run_regression(gallery: str, candidate: str, queries: str, qrels: str | None, out: Path | None) -> dict[str, Any]:
    """The comparison as a report (and, with `out`, its JSON and PNG)."""
    from compatret.data.beir import read_qrels, read_queries
    from compatret.engine.gate import compare
    from compatret.engine.sharded import open_gallery

    open_gallery(gallery)  # one clear error for a missing gallery, before any file is read
    result = compare(gallery, candidate, read_queries(queries), read_qrels(qrels) if qrels else None)
    report = result.to_dict()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "regression.json").write_text(json.dumps(report, indent=2) + "\n")
        plot(result, out / "per_query.png")
    return report


def describe(report: dict[str, Any]) -> str:
    """A few lines a person reads before an upgrade."""
    lines = [f"{report['candidate']} vs serving {report['serving']}, {report['queries']} queries"]
    if report["differences"]:
        for m, d in report["differences"].items():
            lines.append(
                f"  {m}: {report['serving_scores'][m]:.4f} -> {report['candidate_scores'][m]:.4f} "
                f"({d['mean']:+.4f}, 95% CI [{d['low']:+.4f}, {d['high']:+.4f}])"
            )
        lines.append(
            f"  negative flips (a relevant hit leaves the top-{report['flip_k']}): {report['negative_flips']} "
            f"({100 * report['negative_flip_rate']:.1f}%)"
        )
    agree = report["agreement"]
    lines.append(f"  agreement: overlap@10 {agree['overlap_at_k']:.3f}, rank correlation {agree['rank_correlation']:.3f}")
    changed = ", ".join(f"{c['query']} ({c['change']:+.3f})" for c in report["most_changed"][:5])
    lines.append(f"  most changed: {changed}")
    return "\n".join(lines)


def plot(result: Any, path: Path) -> None:
    """Per-query change, sorted: nDCG@10 differences with judgements, else overlap@10."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(7, 3.5))
    if result.per_query:
        s, c = result.per_query["serving"]["ndcg_at_10"], result.per_query["candidate"]["ndcg_at_10"]
        values = np.sort([c[q] - s[q] for q in s])
        ax.bar(range(len(values)), values, width=1.0, color=["#c0392b" if v < 0 else "#2e86c1" for v in values])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_ylabel("nDCG@10 change per query")
    else:
        values = np.sort(list(result.agreement["overlap_at_k"].values()))
        ax.bar(range(len(values)), values, width=1.0)
        ax.set_ylabel("overlap@10 with the serving model")
    ax.set_xlabel("queries, sorted")
    ax.set_title(f"{result.candidate} vs {result.serving}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
