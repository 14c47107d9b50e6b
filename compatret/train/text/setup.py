"""Everything a run needs before its first step: training pairs as gallery rows, old vectors, negatives."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from compatret.core.errors import CompatretError
from compatret.core.lineage import ModelVersion
from compatret.data.beir import load_beir
from compatret.encoders import load_encoder, load_version
from compatret.encoders.base import item_text
from compatret.engine.service import Service
from compatret.search.kernels import Kernel
from compatret.train.text.config import RetrieverConfig
from compatret.train.text.mining import gallery_kernel, static_hard_negatives


@dataclass
class TrainingSet:
    """Training pairs (query index, positive row) over the gallery's rows and the old stored vectors.

    `doc_texts[row]` is None for gallery rows the corpus does not know (never used as negatives).
    """

    old_version: ModelVersion
    old_vectors: np.ndarray
    kernel: Kernel
    queries: list[str]
    positives: list[set[int]]
    pairs: np.ndarray  # [P, 2]: query index, positive row
    doc_texts: list[str | None]
    negatives: list[np.ndarray] | None  # static (STAR-style) negatives per query

    @cached_property
    def text_rows(self) -> np.ndarray:
        """Gallery rows whose document text is known: the only ones a step can embed."""
        return np.flatnonzero([t is not None for t in self.doc_texts])


def gallery_vectors(service: Service, version_id: str) -> tuple[list[str], np.ndarray]:
    """Ids and stored vectors of the rows embedded by `version_id`: the old space, read from the table."""
    present = list(service.gallery.rows_by_version())
    if version_id not in present:
        raise CompatretError(f"gallery {service.gallery.path} holds no vectors of {version_id!r} (it has {', '.join(present) or 'none'})")
    return service.gallery.rows_of(version_id)


def load_training_set(cfg: RetrieverConfig, progress: bool = True) -> TrainingSet:
    """Read the qrels split, map documents to gallery rows, and mine static negatives when needed."""
    data = load_beir(cfg.train_data, splits=(cfg.split,))
    qrels = data.split(cfg.split)
    old_version = load_version(cfg.old)
    ids, vectors = gallery_vectors(Service.open(cfg.gallery), old_version.id)
    row_of = {d: r for r, d in enumerate(ids)}
    doc_texts = [item_text(data.corpus[d]) if d in data.corpus else None for d in ids]
    queries: list[str] = []
    positives: list[set[int]] = []
    for qid, docs in qrels.items():
        rows = {row_of[d] for d in docs if d in row_of}
        if rows:
            queries.append(data.queries[qid])
            positives.append(rows)
    if not queries:
        raise CompatretError(f"none of the {cfg.split} judgements point at documents in the gallery {cfg.gallery}")
    pairs = np.array([(q, r) for q, rows in enumerate(positives) for r in sorted(rows)], dtype=np.int64)
    kernel = gallery_kernel(vectors)
    negatives = None
    if cfg.method != "adore":
        qv = load_encoder(cfg.old).encode_queries(queries, batch_size=64, progress=progress)
        known = np.array([t is not None for t in doc_texts])
        negatives = [n[known[n]] for n in static_hard_negatives(qv, kernel, positives, cfg.depth)]
    return TrainingSet(old_version, vectors, kernel, queries, positives, pairs, doc_texts, negatives)


def sample_negatives(
    ts: TrainingSet, query_idx: np.ndarray, n: int, rng: np.random.Generator, exclude: set[int] | None = None
) -> np.ndarray:
    """n static hard negatives per query (random corpus rows when a query has too few), none of them in `exclude`."""
    known = ts.text_rows
    assert ts.negatives is not None
    exclude = exclude or set()
    out = np.empty((len(query_idx), n), dtype=np.int64)
    for i, q in enumerate(query_idx):
        pool = ts.negatives[q][~np.isin(ts.negatives[q], list(exclude))]
        if len(pool) >= n:
            out[i] = rng.choice(pool, size=n, replace=False)
        else:
            extra = rng.choice(
                known[~np.isin(known, list(ts.positives[q] | exclude | set(pool.tolist())))], size=n - len(pool), replace=False
            )
            out[i] = np.concatenate([pool, extra])
    return out
