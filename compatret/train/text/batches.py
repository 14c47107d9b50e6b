"""Training batches: seeded per epoch, and clean for losses that use in-batch negatives.

MultipleNegativesRankingLoss scores every query of a batch against every document of the
batch. A document relevant to that query (its second positive, or a positive it shares with
another query) would be counted as a negative; sentence-transformers avoids it with its
NoDuplicatesBatchSampler. `clean_batches` applies the same rule to (query, positive row)
pairs: no query twice in a batch, and no document in a batch relevant to another of its
queries. Pairs that do not fit wait for the next batch, so each pair is used once per epoch.
"""

from __future__ import annotations

from collections import deque

import numpy as np


def clean_batches(pairs: np.ndarray, positives: list[set[int]], size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of batches (indices into pairs) in a seeded order; the last ones may be short."""
    waiting = deque(int(i) for i in rng.permutation(len(pairs)))
    batches = []
    while waiting:
        batches.append(_fill(waiting, pairs, positives, size))
    return batches


def _fill(waiting: deque[int], pairs: np.ndarray, positives: list[set[int]], size: int) -> np.ndarray:
    """Take pairs from the front of `waiting` that fit together; put the skipped ones back in front."""
    batch: list[int] = []
    skipped: list[int] = []
    queries: set[int] = set()
    docs: set[int] = set()
    relevant: set[int] = set()
    while waiting and len(batch) < size:
        i = waiting.popleft()
        q, d = int(pairs[i, 0]), int(pairs[i, 1])
        if q in queries or d in relevant or positives[q] & docs:
            skipped.append(i)
            continue
        batch.append(i)
        queries.add(q)
        docs.add(d)
        relevant |= positives[q]
    waiting.extendleft(reversed(skipped))
    return np.array(batch, dtype=np.int64)


def plain_batches(n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Full batches of a seeded permutation (the remainder is dropped): for losses without in-batch negatives."""
    order = rng.permutation(n)
    return [order[i * size : (i + 1) * size] for i in range(max(1, n // size))]
