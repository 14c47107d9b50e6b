"""Choosing a map, and estimating it against staying on the old model, as the gallery will serve it.

Both questions are answered with pseudo-queries: short texts taken out of the gallery's own rows
(a title, or one sentence), each of which should find the row it came from; the row is paired
without its query (both models embed the rest), so no model finds it by the query's own words.
A served gallery holds two kinds of rows: paired rows, which the final map was fitted on, and
the rest, which it never saw. Each pseudo-query is therefore scored twice: answered by the map
fitted on every pair (its row read as a paired row is), and cross-fitted (the rows split into
folds, a query of fold f answered by the map fitted without fold f: its row read as an unseen
row is); its served score weighs the two by the share of the gallery's rows that are paired.
Staying is scored on the same queries (the old model's query against the stored vectors), so
the two are paired and the change gets a bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from compatret.adapt.fit import RIDGE_GRID, fit_one
from compatret.core.transforms import LearnedMap, normalize
from compatret.evaluation.regression import Interval, paired_bootstrap

FOLDS = 3
K = 10
BLOCK = 512  # queries scored at once: bounds the (queries x candidates) score block


@dataclass(frozen=True)
class Option:
    """One map to try: which side it maps, its kind and ridge strength (affine and the MLP's start)."""

    direction: str  # gallery: stored vectors -> new space; query: new model's queries -> stored space
    kind: str
    ridge: float = RIDGE_GRID[0]

    @property
    def label(self) -> str:
        return f"{self.direction} {self.kind}" + (f" ridge {self.ridge:g}" if self.kind != "procrustes" else "")


@dataclass(frozen=True)
class Probe:
    """What the selection reads. Row i of `old`/`new` is one paired row (maps are fitted on them;
    a row with a pseudo-query is paired without it); `q_old`/`q_new` are its pseudo-query by each
    model (NaN rows where it has none); `others` are stored vectors of unpaired rows, distractors
    only; `folds[i]` is row i's fold; `paired_share` the share of the gallery's rows that are paired."""

    old: np.ndarray
    new: np.ndarray
    q_old: np.ndarray
    q_new: np.ndarray
    others: np.ndarray
    folds: np.ndarray
    paired_share: float = 1.0

    @cached_property
    def candidates(self) -> np.ndarray:
        """Paired rows then distractors: stacked once, read by every fold of every option."""
        return np.vstack([self.old, self.others])

    @property
    def queried(self) -> np.ndarray:
        return ~np.isnan(self.q_old[:, 0])


def options(directions: tuple[str, ...], kinds: tuple[str, ...]) -> list[Option]:
    """Every (direction, kind, ridge) to try, simplest first (ties keep the earlier)."""
    out: list[Option] = []
    for d in directions:
        for kind in kinds:
            ridges = RIDGE_GRID if kind == "affine" else (RIDGE_GRID[1],) if kind == "mlp" else (RIDGE_GRID[0],)
            out.extend(Option(d, kind, r) for r in ridges)
    return out


def training_pairs(probe: Probe, rows: np.ndarray, option: Option) -> tuple[np.ndarray, np.ndarray]:
    """(source, target) vectors of `rows` for `option`'s map."""
    x, y = probe.old[rows], probe.new[rows]
    return (x, y) if option.direction == "gallery" else (y, x)


def ndcg_own(queries: np.ndarray, candidates: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Per query, nDCG@10 of its one relevant candidate (index `own`): 1/log2(rank + 1) in the top 10, else 0."""
    out = np.zeros(len(queries))
    cand = normalize(candidates)
    for s in range(0, len(queries), BLOCK):
        scores = normalize(queries[s : s + BLOCK]) @ cand.T
        mine = scores[np.arange(len(scores)), own[s : s + BLOCK]]
        rank = 1 + (scores > mine[:, None]).sum(axis=1)  # ties count in the query's favour
        out[s : s + BLOCK] = np.where(rank <= K, 1.0 / np.log2(rank + 1), 0.0)
    return out


def stay_scores(probe: Probe) -> np.ndarray:
    """The old model's pseudo-queries against the stored vectors: what the gallery serves today."""
    asked = np.flatnonzero(probe.queried)
    return ndcg_own(probe.q_old[asked], probe.candidates, asked)


Fit = Callable[[Option, np.ndarray, np.ndarray], LearnedMap]


def _answered(probe: Probe, option: Option, m: LearnedMap, mine: np.ndarray) -> np.ndarray:
    """nDCG@10 of the pseudo-queries of rows `mine` through map `m`, against every candidate."""
    if option.direction == "gallery":
        return ndcg_own(probe.q_new[mine], m(probe.candidates), mine)
    return ndcg_own(m(probe.q_new[mine]), probe.candidates, mine)


def cross_fitted_scores(probe: Probe, option: Option, fit: Fit | None = None) -> np.ndarray:
    """Per pseudo-query nDCG@10 of `option`, each query served by the map fitted without its fold:
    its row read as a row the map never saw (in `stay_scores`' order)."""
    fit = fit or (lambda o, x, y: fit_one(o.kind, x, y, o.ridge))
    asked = probe.queried
    scores = np.zeros(len(probe.old))
    for f in np.unique(probe.folds):
        held = probe.folds == f
        mine = np.flatnonzero(held & asked)
        scores[mine] = _answered(probe, option, fit(option, *training_pairs(probe, np.flatnonzero(~held), option)), mine)
    return scores[asked]


def served_scores(probe: Probe, option: Option, fit: Fit | None = None) -> np.ndarray:
    """Per pseudo-query nDCG@10 of `option` as the gallery will serve it: a paired row (read
    through the map fitted on every pair) with probability `paired_share`, else an unseen row
    (cross-fitted)."""
    fit = fit or (lambda o, x, y: fit_one(o.kind, x, y, o.ridge))
    share = probe.paired_share
    unseen = cross_fitted_scores(probe, option, fit) if share < 1 else 0.0
    if share <= 0:
        return unseen  # type: ignore[return-value]
    asked = np.flatnonzero(probe.queried)
    seen = _answered(probe, option, fit(option, *training_pairs(probe, np.arange(len(probe.old)), option)), asked)
    return share * seen + (1 - share) * unseen


@dataclass(frozen=True)
class Estimate:
    """Adapted vs staying on the pseudo-queries: means and the paired change with its interval."""

    stay: float
    adapted: float
    change: Interval
    queries: int

    def to_dict(self) -> dict[str, float | int]:
        return {
            "stay": self.stay,
            "adapted": self.adapted,
            "change": self.change.mean,
            "low": self.change.low,
            "high": self.change.high,
            "queries": self.queries,
        }

    def line(self) -> str:
        c = self.change
        return (
            f"nDCG@10 on {self.queries} pseudo-queries from the gallery's own text: staying {self.stay:.3f}, "
            f"adapted {self.adapted:.3f} (change {c.mean:+.3f}, 95 % interval [{c.low:+.3f}, {c.high:+.3f}])"
        )


def estimate(stay: np.ndarray, adapted: np.ndarray, seed: int = 0) -> Estimate:
    """The paired change (adapted - stay) with a bootstrap interval over the pseudo-queries."""
    return Estimate(float(stay.mean()), float(adapted.mean()), paired_bootstrap(adapted - stay, resamples=2000, seed=seed), len(stay))
