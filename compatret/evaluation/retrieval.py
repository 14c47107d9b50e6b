"""IR metrics (nDCG@10, MRR@10, Recall@100) for a (query model, gallery) pair, scored by ranx.

The gallery side is always a compatret index: queries are embedded with the query model and
searched through `Service.query`, so the lineage and Compat rules decide what is compared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from compatret.data.beir import BeirData, Qrels
from compatret.errors import CompatretError

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


def search_run(
    gallery_dir: str | Path,
    query_model: str | None,
    queries: Mapping[str, str],
    k: int = 100,
    unchecked: bool = False,
    batch_size: int = 64,
) -> Run:
    """Top-k of each query from the gallery, embedded with `query_model` (default: serving).

    unchecked=True embeds with the query model but searches as if its vectors were in the
    gallery's own space, skipping the lineage check: what a naive system does, kept only
    to measure how wrong an incompatible model is.
    """
    from compatret.index.service import Service

    return service_run(Service.open(gallery_dir), query_model, queries, k, unchecked, batch_size)


def service_run(service: Any, query_model: str | None, queries: Mapping[str, str], k: int = 100, unchecked: bool = False,
                batch_size: int = 64) -> Run:
    """search_run on an open Service: several runs share its search view and kernels."""
    from compatret.encoders import load_encoder

    qids = list(queries)
    texts = [queries[q] for q in qids]
    if unchecked:
        if query_model is None:
            raise CompatretError("unchecked search needs an explicit query model")
        vecs = load_encoder(query_model).encode_queries(texts, batch_size=batch_size)
        dim = service.meta.vector_model.dim
        if vecs.shape[1] < dim:
            raise CompatretError(f"query model gives {vecs.shape[1]}-d vectors, the gallery holds {dim}-d")
        results = service.query(vectors=np.ascontiguousarray(vecs[:, :dim]), model=service.meta.vector_model.id, k=k)
    else:
        results = service.query(texts=texts, model=query_model, k=k)
    return {q: dict(zip(r.ids, r.scores)) for q, r in zip(qids, results)}


def evaluate_pair(
    query_model: str | None,
    gallery_dir: str | Path,
    data: BeirData,
    split: str = "test",
    unchecked: bool = False,
) -> dict[str, float]:
    """nDCG@10, MRR@10 and Recall@100 of `query_model` queries against the gallery's vectors."""
    qrels = data.split(split)
    run = search_run(gallery_dir, query_model, {q: data.queries[q] for q in qrels}, k=100, unchecked=unchecked)
    return score_run(qrels, run)


def build_gallery(model: str, gallery_dir: str | Path, data: BeirData, batch_size: int = 64, progress: bool = True) -> Path:
    """A gallery of the whole corpus embedded by `model`; resumes a partly filled one."""
    from compatret.index.gallery import Gallery
    from compatret.index.service import Service

    path = Path(gallery_dir)
    if Gallery.exists(path):
        service = Service.open(path)
        if service.meta.vector_model.id != _version_id(model):
            raise CompatretError(f"{path} holds vectors of {service.meta.vector_model.id!r}, not {model!r}")
    else:
        service = Service.create(path, model=model)
    items = data.items()
    have = set(service.gallery.existing([it["id"] for it in items]))
    todo = [it for it in items if it["id"] not in have]
    for s in range(0, len(todo), 1024):  # one resumable chunk at a time
        service.add_items(todo[s : s + 1024], batch_size=batch_size, progress=progress)
    return path


def _version_id(model: str) -> str:
    from compatret.encoders import load_version

    return load_version(model).id
