"""Retrieval runs of a gallery (for metrics): every query answered through the engine."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from compatret.core.errors import CompatretError
from compatret.data.beir import BeirData
from compatret.evaluation.retrieval import Run, score_run


def service_run(
    service: Any, query_model: str | None, queries: Mapping[str, str], k: int = 100, unchecked: bool = False, batch_size: int = 64
) -> Run:
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
    from compatret.engine.service import Service
    from compatret.store.gallery import Gallery

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
    from compatret.engine.sharded import open_gallery

    return service_run(open_gallery(gallery_dir), query_model, queries, k, unchecked, batch_size)
