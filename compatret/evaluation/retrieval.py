"""IR metrics (nDCG@10, MRR@10, Recall@100) for a (query model, gallery) pair, scored by ranx.

The gallery side is always a compatret index: queries are embedded with the query model and
searched through `Service.query`, so the lineage and Compat rules decide what is compared.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from compatret.core.errors import CompatretError
from compatret.data.beir import Qrels

METRICS = {"ndcg_at_10": "ndcg@10", "mrr_at_10": "mrr@10", "recall_at_100": "recall@100"}
Run = dict[str, dict[str, float]]


def ranx_evaluate(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]], **options: Any) -> Any:
    """ranx's `evaluate` of METRICS, without the NumbaTypeSafetyWarning its compiled kernels raise
    on every call (an int cast inside ranx, not a fault of the data)."""
    import warnings

    from numba.core.errors import NumbaTypeSafetyWarning
    from ranx import Qrels as RQrels
    from ranx import Run as RRun
    from ranx import evaluate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumbaTypeSafetyWarning)
        return evaluate(RQrels(qrels), RRun(run), list(METRICS.values()), **options)


def score_run(qrels: Qrels, run: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The three metrics of a run against qrels, averaged over the judged queries (ranx)."""
    if not qrels:
        raise CompatretError("no judged queries to evaluate")
    # make_comparable: a judged query with no results counts as zero, unjudged queries are dropped
    kept = {q: dict(r) for q, r in run.items() if r}
    if not kept:
        return {name: 0.0 for name in METRICS}
    scores = ranx_evaluate(qrels, kept, make_comparable=True)
    return {name: float(scores[key]) for name, key in METRICS.items()}
