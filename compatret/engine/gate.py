"""The regression gate of an upgrade or a backfill, run against the gallery itself."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from compatret.core.errors import CompatretError
from compatret.data.beir import Qrels
from compatret.evaluation.regression import Interval, Regression, agreement, check_limits, judged_change, verdict
from compatret.evaluation.retrieval import Run


def judged_queries(service: Any, queries: Mapping[str, str], qrels: Qrels | None) -> dict[str, str]:
    """The queries to score (the judged ones when there are judgements), after the checks that make
    the numbers mean something: text queries for a text gallery, and judgements that name queries
    of the file and documents of the gallery."""
    if not queries:
        raise CompatretError("the query file holds no queries")
    if service.meta.modality != "text":
        raise CompatretError(f"this gallery holds {service.meta.modality} items: the queries are text")
    if qrels is None:
        return dict(queries)
    unknown = sorted(set(qrels) - set(queries))
    if unknown:
        raise CompatretError(f"the qrels judge {len(unknown)} queries the query file lacks, e.g. {unknown[0]!r}")
    judged = {d for rel in qrels.values() for d in rel}
    missing = sorted(judged - set(service.existing(sorted(judged))))
    if missing:
        raise CompatretError(f"the qrels name {len(missing)} documents the gallery lacks, e.g. {missing[0]!r}")
    return {q: queries[q] for q in qrels}


def compare(
    gallery_dir: str | Path, candidate: str, queries: Mapping[str, str], qrels: Qrels | None = None, k: int = 100, unchecked: bool = False
) -> Regression:
    """Search `queries` with the serving model and with `candidate` against the gallery as it is,
    and compare them (with `qrels`: metrics, bootstrap intervals, negative flips). `unchecked`
    reads the stored vectors raw, past the lineage check: a benchmark's view of what an
    incompatible model would do, never a gate's."""
    from compatret.engine.runs import service_run
    from compatret.engine.sharded import open_gallery

    service = open_gallery(gallery_dir)  # one search view (one snapshot) for both runs
    queries = judged_queries(service, queries, qrels)
    serving_id = service.meta.serving.id
    before = service_run(service, None, queries, k=k)
    after = service_run(service, candidate, queries, k=k, unchecked=unchecked)
    scored: dict[str, dict[str, dict[str, float]]] = {}
    differences: dict[str, Interval] = {}
    flips: list[str] = []
    if qrels is not None:
        serving_scores, candidate_scores, differences, flips = judged_change(qrels, before, after)
        scored = {"serving": serving_scores, "candidate": candidate_scores}
    from compatret.encoders import load_version

    return Regression(serving_id, load_version(candidate).id, len(queries), scored, differences, flips, agreement(before, after))


GATE_DIR = "gate"  # beside the gallery's table: the operator's queries and judgements for HTTP upgrades
GATE_FILES = ("queries.jsonl", "qrels.tsv")


def stored_gate(gallery_dir: str | Path) -> tuple[Path, Path]:
    """The gate files `compatret index gate` stored beside the gallery; an error naming that command if absent."""
    queries, qrels = (Path(gallery_dir) / GATE_DIR / name for name in GATE_FILES)
    if not queries.is_file() or not qrels.is_file():
        raise CompatretError("no gate queries stored for this gallery: an operator runs `compatret index gate DIR --queries Q --qrels R`")
    return queries, qrels


def gate_check(
    gallery_dir: str | Path, model: str, queries: str | Path, qrels: str | Path, max_drop: float = 0.005, max_flips: float = 0.05
) -> dict[str, Any]:
    """Check `model` against the serving model on the user's judged queries: one CompatretError
    (the upgrade then changes nothing) when it would serve them worse. Returns the numbers the
    history records."""
    from compatret.data.beir import read_qrels, read_queries

    check_limits(max_drop, max_flips)
    result = compare(gallery_dir, model, read_queries(queries), read_qrels(qrels))
    d = result.differences["ndcg_at_10"]
    outcome, why = verdict(d, result.queries, max_drop)
    if outcome == "undecided":
        raise CompatretError(f"gate cannot decide on {result.candidate}: {why}; nothing changed")
    if outcome == "worse":
        raise CompatretError(f"gate: {result.candidate} may serve these queries worse: {why}; nothing changed")
    if result.flip_rate > max_flips:
        raise CompatretError(
            f"gate: {result.candidate} loses the relevant top-10 hit of {len(result.flips)} of {result.queries} "
            f"queries ({100 * result.flip_rate:.1f}% > {100 * max_flips:.1f}%); nothing changed"
        )
    return {
        "serving": result.serving,
        "queries": result.queries,
        "ndcg_at_10": d.to_dict(),
        "negative_flip_rate": result.flip_rate,
        "max_drop": max_drop,
        "max_flips": max_flips,
    }


def store_gate(gallery_dir: str | Path, queries: str | Path, qrels: str | Path) -> Path:
    """Copy validated gate files beside the gallery (written whole, then renamed), so an HTTP
    upgrade can be gated without a client naming server paths."""
    import os
    import shutil

    from compatret.data.beir import read_qrels, read_queries

    read_queries(queries), read_qrels(qrels)  # refuse bad files before anything is written
    folder = Path(gallery_dir) / GATE_DIR
    folder.mkdir(exist_ok=True)
    for src, name in zip((queries, qrels), GATE_FILES):
        tmp = folder / f".{name}.tmp"
        shutil.copyfile(src, tmp)
        os.replace(tmp, folder / name)
    return folder


BACKFILL_CHECKPOINTS = (0.1, 0.5, 1.0)  # shares of rows on the serving model's vectors where a gated backfill is checked


@dataclass(frozen=True)
class BackfillGate:
    """The serving model's per-query results on the gallery when a backfill starts: each checkpoint
    of the backfill is compared with them (the same queries, the same model, other vectors)."""

    gallery_dir: Path
    queries: dict[str, str]
    qrels: Qrels
    max_drop: float
    max_flips: float
    start: Run
    start_version: int  # the table version (a sharded gallery: the snapshot) the run began from: what `index rollback --to` restores

    @classmethod
    def open(
        cls, gallery_dir: str | Path, queries: str | Path, qrels: str | Path, max_drop: float = 0.005, max_flips: float = 0.05
    ) -> BackfillGate:
        from compatret.data.beir import read_qrels, read_queries
        from compatret.engine.runs import service_run
        from compatret.engine.sharded import ShardedService, open_gallery

        check_limits(max_drop, max_flips)
        service = open_gallery(gallery_dir)
        judged = read_qrels(qrels)
        chosen = judged_queries(service, read_queries(queries), judged)
        start = service_run(service, None, chosen)
        began = service.snapshot.snapshot if isinstance(service, ShardedService) else service.index.table_version
        return cls(Path(gallery_dir), chosen, judged, max_drop, max_flips, start, began)

    def check(self) -> dict[str, Any]:
        """The gallery now against the gallery at the start: nDCG@10 change with its interval, flips, and whether it passes."""
        from compatret.engine.runs import service_run
        from compatret.engine.sharded import open_gallery

        now = service_run(open_gallery(self.gallery_dir), None, self.queries)
        before, after, changes, flips = judged_change(self.qrels, self.start, now)
        d, flip_rate = changes["ndcg_at_10"], len(flips) / len(self.qrels)
        outcome, why = verdict(d, len(self.qrels), self.max_drop)
        if outcome == "pass" and flip_rate > self.max_flips:
            outcome, why = "worse", f"negative flips {100 * flip_rate:.1f}% > {100 * self.max_flips:.1f}%"
        return {
            "verdict": outcome,
            "reason": why,
            "ndcg_at_10_before": float(np.mean(list(before["ndcg_at_10"].values()))),
            "ndcg_at_10_now": float(np.mean(list(after["ndcg_at_10"].values()))),
            "change": d.to_dict(),
            "negative_flip_rate": flip_rate,
            "passed": outcome == "pass",
        }


def gated_backfill(gate: BackfillGate, run_to: Callable[[float], Any], cap: float = 1.0) -> list[dict[str, Any]]:
    """Backfill checkpoint by checkpoint (10 %, 50 %, 100 % of rows, at most `cap`) with `run_to(fraction)`,
    checking the gate at each; stops at the first failure. What was committed stays (rerun to resume)."""
    steps: list[dict[str, Any]] = []
    for fraction in sorted({f for f in BACKFILL_CHECKPOINTS if f < cap} | {cap}):
        report = run_to(fraction)
        step: dict[str, Any] = {"fraction": fraction, "report": report.to_dict()}
        steps.append(step)
        if report.stopped:  # Ctrl-C (a serving model changed meanwhile raises)
            break
        step["gate"] = gate.check()
        if not step["gate"]["passed"]:
            break
    return steps
