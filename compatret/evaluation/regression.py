"""Does a candidate model serve *this gallery's* queries at least as well as the serving model?

A model can be compatible by construction and still rank a user's queries worse. Both models'
queries are searched against the gallery as it is now (the candidate through its lineage
plan, before any upgrade), and compared query by query:
- with judgements: nDCG@10, MRR@10 and Recall@100 per query (ranx), the mean difference with a
  paired bootstrap confidence interval, and the negative-flip rate: queries whose first relevant
  hit was in the serving model's top-k and is not in the candidate's (after RACT / hot-refresh
  model upgrades, ICLR 2022);
- without: how much the two rankings agree (overlap@k, rank correlation over the union of both
  top-k) and the queries that changed most, for a person to look at.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from compatret.data.beir import Qrels
from compatret.errors import CompatretError
from compatret.evaluation.retrieval import METRICS, Run

FLIP_K = 10


@dataclass(frozen=True)
class Interval:
    """Mean of paired differences (candidate - serving) and its bootstrap confidence interval."""

    mean: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high}


def paired_bootstrap(diff: np.ndarray, resamples: int = 10_000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap of the mean of per-query differences: queries are resampled with
    replacement, keeping each query's pair together."""
    d = np.asarray(diff, dtype=np.float64)
    if d.size == 0:
        raise CompatretError("no queries to compare")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    tail = (1 - confidence) / 2
    return Interval(float(d.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail)))


def per_query(qrels: Qrels, run: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Each metric of each judged query (0 for a query with no results), by ranx."""
    from compatret.evaluation.retrieval import ranx_evaluate

    qids = sorted(qrels)
    full = {q: dict(run.get(q) or {"\x00none": 0.0}) for q in qids}  # ranx needs a result; an unknown id scores 0
    scores = ranx_evaluate({q: qrels[q] for q in qids}, full, return_mean=False)
    return {name: dict(zip(qids, map(float, scores[key]))) for name, key in METRICS.items()}


def first_relevant_rank(ranked: Mapping[str, float], relevant: Mapping[str, int]) -> int | None:
    """0-based rank of the first relevant document (best score first), None if none was returned."""
    order = sorted(ranked, key=lambda d: -ranked[d])
    return next((r for r, d in enumerate(order) if relevant.get(d, 0) > 0), None)


def negative_flips(qrels: Qrels, serving: Run, candidate: Run, k: int = FLIP_K) -> list[str]:
    """Queries the serving model answered (a relevant document in its top-k) and the candidate does not."""
    flips = []
    for q, rel in qrels.items():
        before, after = first_relevant_rank(serving.get(q, {}), rel), first_relevant_rank(candidate.get(q, {}), rel)
        if before is not None and before < k and (after is None or after >= k):
            flips.append(q)
    return flips


def agreement(serving: Run, candidate: Run, k: int = 10) -> dict[str, dict[str, float]]:
    """Per query: overlap@k of the two top-k, and Spearman's correlation of the two rankings over
    the union of both top-k (a document missing from one list takes rank k there)."""
    from scipy.stats import spearmanr

    out: dict[str, dict[str, float]] = {"overlap_at_k": {}, "rank_correlation": {}}
    for q in serving:
        a = sorted(serving[q], key=lambda d: -serving[q][d])[:k]
        b = sorted(candidate.get(q, {}), key=lambda d: -candidate[q][d])[:k]
        union = sorted(set(a) | set(b))
        out["overlap_at_k"][q] = len(set(a) & set(b)) / max(1, k)
        ra = [a.index(d) if d in a else k for d in union]
        rb = [b.index(d) if d in b else k for d in union]
        rho = spearmanr(ra, rb).statistic if len(set(ra)) > 1 and len(set(rb)) > 1 else float(ra == rb)
        out["rank_correlation"][q] = float(np.nan_to_num(rho, nan=0.0))
    return out


@dataclass(frozen=True)
class Regression:
    """The comparison of a candidate with the serving model on one set of queries."""

    serving: str
    candidate: str
    queries: int
    per_query: dict[str, dict[str, dict[str, float]]]  # "serving"/"candidate" -> metric -> query -> value
    differences: dict[str, Interval]  # metric -> candidate - serving
    flips: list[str]
    agreement: dict[str, dict[str, float]]

    @property
    def flip_rate(self) -> float:
        return len(self.flips) / max(1, self.queries)

    def means(self, who: str) -> dict[str, float]:
        return {m: float(np.mean(list(v.values()))) for m, v in self.per_query.get(who, {}).items()}

    def most_changed(self, n: int = 10) -> list[tuple[str, float]]:
        """Queries with the largest change: the biggest nDCG@10 drops with judgements, else the lowest overlap."""
        if self.per_query:
            s, c = self.per_query["serving"]["ndcg_at_10"], self.per_query["candidate"]["ndcg_at_10"]
            return sorted(((q, c[q] - s[q]) for q in s), key=lambda t: t[1])[:n]
        return sorted(self.agreement["overlap_at_k"].items(), key=lambda t: t[1])[:n]

    def to_dict(self) -> dict[str, Any]:
        agree = {name: float(np.mean(list(v.values()))) for name, v in self.agreement.items()}
        return {"serving": self.serving, "candidate": self.candidate, "queries": self.queries,
                "serving_scores": self.means("serving"), "candidate_scores": self.means("candidate"),
                "differences": {m: i.to_dict() for m, i in self.differences.items()},
                "negative_flips": len(self.flips), "negative_flip_rate": self.flip_rate, "flip_k": FLIP_K,
                "agreement": agree, "most_changed": [{"query": q, "change": v} for q, v in self.most_changed()]}


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
    missing = sorted(judged - set(service.gallery.existing(sorted(judged))))
    if missing:
        raise CompatretError(f"the qrels name {len(missing)} documents the gallery lacks, e.g. {missing[0]!r}")
    return {q: queries[q] for q in qrels}


def judged_change(qrels: Qrels, before: Run, after: Run) -> tuple[dict, dict, dict[str, Interval], list[str]]:
    """Two runs on judged queries: per-query metrics of each, the bootstrap interval of each metric's
    mean change (after - before), and the negative flips."""
    scored_before, scored_after = per_query(qrels, before), per_query(qrels, after)
    qids = sorted(qrels)
    changes = {m: paired_bootstrap(np.array([scored_after[m][q] - scored_before[m][q] for q in qids])) for m in METRICS}
    return scored_before, scored_after, changes, negative_flips(qrels, before, after)


def check_limits(max_drop: float, max_flips: float) -> None:
    if max_drop < 0 or not 0 <= max_flips <= 1:
        raise CompatretError("--max-drop must be >= 0 and --max-flips within [0, 1]")


def verdict(change: Interval, queries: int, max_drop: float) -> tuple[str, str]:
    """`pass` when the interval's lower end clears -max_drop; `undecided` when it does not but the
    interval is wider than the allowed drop (too few judged queries to tell a small change from
    noise), with what would decide it; else `worse`. Only `pass` lets a change through."""
    if change.low >= -max_drop:
        return "pass", ""
    half = (change.high - change.low) / 2
    if half > max_drop and change.high >= -max_drop:
        needed = math.ceil(round(queries * (half / max(max_drop, 1e-4)) ** 2, 6))
        return "undecided", (f"the 95% interval [{change.low:+.4f}, {change.high:+.4f}] on {queries} judged queries is wider than "
                             f"the allowed drop {max_drop}, so it cannot tell this change from noise: judge more queries "
                             f"(about {needed} would narrow it to +/-{max_drop}) or accept a larger drop (--max-drop {-change.low:.3f})")
    return "worse", (f"nDCG@10 {change.mean:+.4f} (95% CI [{change.low:+.4f}, {change.high:+.4f}], allowed drop {max_drop})")


def compare(gallery_dir: str | Path, candidate: str, queries: Mapping[str, str], qrels: Qrels | None = None,
            k: int = 100, unchecked: bool = False) -> Regression:
    """Search `queries` with the serving model and with `candidate` against the gallery as it is,
    and compare them (with `qrels`: metrics, bootstrap intervals, negative flips). `unchecked`
    reads the stored vectors raw, past the lineage check: a benchmark's view of what an
    incompatible model would do, never a gate's."""
    from compatret.evaluation.retrieval import service_run
    from compatret.index.service import Service

    service = Service.open(gallery_dir)  # one search view for both runs
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


def gate_check(gallery_dir: str | Path, model: str, queries: str | Path, qrels: str | Path, max_drop: float = 0.005,
               max_flips: float = 0.05) -> dict[str, Any]:
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
        raise CompatretError(f"gate: {result.candidate} loses the relevant top-10 hit of {len(result.flips)} of {result.queries} "
                             f"queries ({100 * result.flip_rate:.1f}% > {100 * max_flips:.1f}%); nothing changed")
    return {"serving": result.serving, "queries": result.queries, "ndcg_at_10": d.to_dict(), "negative_flip_rate": result.flip_rate,
            "max_drop": max_drop, "max_flips": max_flips}


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
    start_version: int  # the table version the run began from: what `index rollback --to` restores

    @classmethod
    def open(cls, gallery_dir: str | Path, queries: str | Path, qrels: str | Path, max_drop: float = 0.005,
             max_flips: float = 0.05) -> BackfillGate:
        from compatret.data.beir import read_qrels, read_queries
        from compatret.evaluation.retrieval import service_run
        from compatret.index.service import Service

        check_limits(max_drop, max_flips)
        service = Service.open(gallery_dir)
        judged = read_qrels(qrels)
        chosen = judged_queries(service, read_queries(queries), judged)
        start = service_run(service, None, chosen)
        return cls(Path(gallery_dir), chosen, judged, max_drop, max_flips, start, service.index.table_version)

    def check(self) -> dict[str, Any]:
        """The gallery now against the gallery at the start: nDCG@10 change with its interval, flips, and whether it passes."""
        from compatret.evaluation.retrieval import service_run
        from compatret.index.service import Service

        now = service_run(Service.open(self.gallery_dir), None, self.queries)
        before, after, changes, flips = judged_change(self.qrels, self.start, now)
        d, flip_rate = changes["ndcg_at_10"], len(flips) / len(self.qrels)
        outcome, why = verdict(d, len(self.qrels), self.max_drop)
        if outcome == "pass" and flip_rate > self.max_flips:
            outcome, why = "worse", f"negative flips {100 * flip_rate:.1f}% > {100 * self.max_flips:.1f}%"
        return {"verdict": outcome, "reason": why, "ndcg_at_10_before": float(np.mean(list(before["ndcg_at_10"].values()))),
                "ndcg_at_10_now": float(np.mean(list(after["ndcg_at_10"].values()))), "change": d.to_dict(),
                "negative_flip_rate": flip_rate, "passed": outcome == "pass"}


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
