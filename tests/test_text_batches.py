"""Clean batches for in-batch negatives: no false negatives, every pair once per epoch, seeded."""

import numpy as np

from compatret.train.text.batches import clean_batches, plain_batches


def scifact_like_pairs(seed: int = 0) -> tuple[np.ndarray, list[set[int]]]:
    """60 queries over 150 documents: some queries with several positives, some positives shared."""
    rng = np.random.default_rng(seed)
    positives = [set(rng.choice(150, size=rng.integers(1, 4), replace=False).tolist()) for _ in range(60)]
    pairs = np.array([(q, d) for q, docs in enumerate(positives) for d in sorted(docs)])
    return pairs, positives


def false_negatives(batch: np.ndarray, pairs: np.ndarray, positives: list[set[int]]) -> int:
    """(query, other pair's document) combinations in the batch where the document is relevant to the query."""
    return sum(1 for a in batch for b in batch if a != b and pairs[b, 1] in positives[pairs[a, 0]])


def test_clean_batches_hold_no_false_negative_and_use_every_pair_once():
    pairs, positives = scifact_like_pairs()
    batches = clean_batches(pairs, positives, 16, np.random.default_rng(3))
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(pairs)))
    assert all(false_negatives(b, pairs, positives) == 0 for b in batches)
    assert all(len(b) == 16 for b in batches[:-4])  # only the tail (pairs that clash with each other) may be short
    # what the rule prevents: a plain permutation of the same pairs does put false negatives in batches
    assert sum(false_negatives(b, pairs, positives) for b in plain_batches(len(pairs), 16, np.random.default_rng(3))) > 0


def test_clean_batches_repeat_for_a_seed_and_change_with_it():
    pairs, positives = scifact_like_pairs()
    first = clean_batches(pairs, positives, 16, np.random.default_rng([7, 0]))
    again = clean_batches(pairs, positives, 16, np.random.default_rng([7, 0]))
    other = clean_batches(pairs, positives, 16, np.random.default_rng([7, 1]))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(np.concatenate(first), np.concatenate(other))
