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
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from compatret.core.errors import CompatretError
from compatret.data.beir import Qrels
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
        return {
            "serving": self.serving,
            "candidate": self.candidate,
            "queries": self.queries,
            "serving_scores": self.means("serving"),
            "candidate_scores": self.means("candidate"),
            "differences": {m: i.to_dict() for m, i in self.differences.items()},
            "negative_flips": len(self.flips),
            "negative_flip_rate": self.flip_rate,
            "flip_k": FLIP_K,
            "agreement": agree,
            "most_changed": [{"query": q, "change": v} for q, v in self.most_changed()],
        }


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
        return "undecided", (
            f"the 95% interval [{change.low:+.4f}, {change.high:+.4f}] on {queries} judged queries is wider than "
            f"the allowed drop {max_drop}, so it cannot tell this change from noise: judge more queries "
            f"(about {needed} would narrow it to +/-{max_drop}) or accept a larger drop (--max-drop {-change.low:.3f})"
        )
    return "worse", (f"nDCG@10 {change.mean:+.4f} (95% CI [{change.low:+.4f}, {change.high:+.4f}], allowed drop {max_drop})")
