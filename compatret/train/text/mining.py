"""Hard negatives through compatret's own search kernel: static (STAR) and dynamic (ADORE).

Both work on gallery row numbers, so the vectors they rank are the ones the index serves.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from compatret.search.kernels import Kernel, make_kernel


def gallery_kernel(vectors: np.ndarray, name: str = "auto") -> Kernel:
    """The exact search kernel the index would use over these (L2-normalised) vectors."""
    return make_kernel(name, np.ascontiguousarray(vectors, dtype=np.float32))


def static_hard_negatives(query_vectors: np.ndarray, kernel: Kernel, positives: Sequence[set[int]], depth: int = 200) -> list[np.ndarray]:
    """STAR: each query's top-`depth` gallery rows under the old model, minus its positives.

    Mined once before training: the old ranking is what the new model must beat.
    """
    _, rows = kernel.search(np.ascontiguousarray(query_vectors, dtype=np.float32), depth)
    return [np.array([r for r in row if r >= 0 and r not in pos], dtype=np.int64) for row, pos in zip(rows, positives)]


@dataclass(frozen=True)
class Candidates:
    """Per query: positives first, then retrieved negatives; `ranks` are 0-based ranks in the
    current retrieval (`depth` for a positive the retrieval missed); padding has mask False."""

    rows: np.ndarray  # [B, n] int64 gallery rows, -1 for padding
    relevant: np.ndarray  # [B, n] bool
    ranks: np.ndarray  # [B, n] int64
    mask: np.ndarray  # [B, n] bool


def dynamic_candidates(query_vectors: np.ndarray, kernel: Kernel, positives: Sequence[set[int]], depth: int = 200) -> Candidates:
    """ADORE: re-retrieve the top-`depth` with the current query encoder against frozen item vectors.

    Called every step, so the negatives are the ones the model ranks high right now.
    """
    _, found = kernel.search(np.ascontiguousarray(query_vectors, dtype=np.float32), depth)
    width = depth + max((len(p) for p in positives), default=0)
    rows = np.full((len(found), width), -1, np.int64)
    ranks = np.full((len(found), width), depth, np.int64)
    relevant = np.zeros((len(found), width), bool)
    for i, (row, pos) in enumerate(zip(found, positives)):
        rank_of = {int(r): n for n, r in enumerate(row) if r >= 0}
        ordered = sorted(pos)
        negs = [int(r) for r in row if r >= 0 and int(r) not in pos]
        entries = ordered + negs
        rows[i, : len(entries)] = entries
        ranks[i, : len(entries)] = [rank_of.get(r, depth) for r in entries]
        relevant[i, : len(ordered)] = True
    return Candidates(rows, relevant, ranks, rows >= 0)
