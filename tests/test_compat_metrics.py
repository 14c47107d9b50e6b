"""Retrieval scores and ECC / AC / AM on hand-made cases with known answers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compatret.evaluation.compat_metrics import (
    average_compatibility,
    average_multimodel_accuracy,
    ecc,
    empirical_compatibility_criterion,
    plot_compat_matrix,
    retrieval_scores,
)

# Query model i (row) against gallery model j (column); the upper triangle is junk on
# purpose: it must be ignored.
MATRIX = np.array([[50.0, 99.0, 99.0], [55.0, 60.0, 99.0], [40.0, 65.0, 70.0]])


def test_retrieval_scores_hand_made() -> None:
    gallery = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    gallery_labels = np.array([0, 1, 0, 1])
    queries = np.array([[3.0, 0.0], [0.5, 1.0]])  # unnormalised on purpose
    # q0 ranks g0(rel) g1 g2(rel) g3 -> AP 5/6, hit; q1 ranks g2 g1(rel) g0 g3(rel) -> AP 1/2, miss.
    scores = retrieval_scores(queries, gallery, np.array([0, 1]), gallery_labels, leave_one_out=False)
    assert scores["top1"] == pytest.approx(50.0)
    assert scores["map"] == pytest.approx(100.0 * (5 / 6 + 1 / 2) / 2)


def test_retrieval_scores_leave_one_out() -> None:
    feats = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.1, 1.0]])
    labels = np.array([0, 0, 1, 1])
    loo = retrieval_scores(feats, feats, labels, labels, leave_one_out=True)
    assert loo["top1"] == pytest.approx(0.0)
    assert loo["map"] == pytest.approx(100.0 * (1 / 3 + 1 / 3 + 1 / 2 + 1 / 2) / 4)
    # Without leave-one-out every query finds itself first.
    assert retrieval_scores(feats, feats, labels, labels, leave_one_out=False)["top1"] == 100.0
    with pytest.raises(ValueError):
        retrieval_scores(feats[:3], feats, labels[:3], labels, leave_one_out=True)


def _reference(q, g, ql, gl, loo):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    hits, aps = [], []
    for i in range(len(q)):
        keep = np.arange(len(g)) != i if loo else np.ones(len(g), dtype=bool)
        order = np.argsort(-(g[keep] @ q[i]))
        rel = gl[keep][order] == ql[i]
        ranks = np.flatnonzero(rel) + 1
        if len(ranks):  # a query with nothing relevant counts in neither score
            hits.append(rel[0])
            aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    return 100 * np.mean(hits), 100 * np.mean(aps)


@pytest.mark.parametrize("loo", [True, False])
def test_retrieval_scores_match_brute_force_across_chunks(loo: bool) -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(1300, 8)) + np.repeat(rng.normal(size=(13, 8)), 100, axis=0)
    labels = np.repeat(np.arange(13), 100)
    scores = retrieval_scores(feats, feats, labels, labels, leave_one_out=loo)
    top1, mean_ap = _reference(feats, feats, labels, labels, loo)
    assert scores["top1"] == pytest.approx(top1)
    assert scores["map"] == pytest.approx(mean_ap, rel=1e-5)


def test_lone_queries_count_in_neither_score() -> None:
    """Queries whose label has no other item: dropped from top-1 and mAP alike (one denominator)."""
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(400, 16)).astype(np.float32)
    labels = np.concatenate([rng.integers(0, 20, size=380), np.arange(100, 120)])  # 20 lone labels
    scores = retrieval_scores(feats, feats, labels, labels, leave_one_out=True)
    top1, mean_ap = _reference(feats, feats, labels, labels, True)
    assert scores["top1"] == pytest.approx(top1) and scores["map"] == pytest.approx(mean_ap, rel=1e-5)
    assert round(scores["top1"] / 100 * 380, 6) == round(scores["top1"] / 100 * 380)  # a share of the 380 queries, not of 400


def test_ecc_hand_made() -> None:
    expected = np.array([[False, False, False], [True, False, False], [False, True, False]])
    assert np.array_equal(empirical_compatibility_criterion(MATRIX), expected)
    assert ecc is empirical_compatibility_criterion
    # Equal accuracy is not an improvement.
    assert not ecc(np.array([[50.0, 0.0], [50.0, 60.0]]))[1, 0]


def test_average_compatibility_hand_made() -> None:
    assert average_compatibility(MATRIX) == pytest.approx(2 / 3)
    rows, cols = np.indices((4, 4))
    monotone = 10.0 * (rows + 1) + cols  # M[i][j] > M[j][j] for every i > j
    assert average_compatibility(monotone) == 1.0
    monotone[3, 0] = monotone[0, 0]  # one tie out of 6 pairs breaks compatibility
    assert average_compatibility(monotone) == pytest.approx(5 / 6)
    assert average_compatibility(np.array([[10, 0], [9, 20.0]])) == 0.0
    assert average_compatibility(np.array([[42.0]])) == 1.0


def test_average_multimodel_accuracy_hand_made() -> None:
    assert average_multimodel_accuracy(MATRIX) == pytest.approx((50 + 55 + 60 + 40 + 65 + 70) / 6)
    assert average_multimodel_accuracy(np.array([[42.0]])) == 42.0
    with pytest.raises(ValueError):
        average_multimodel_accuracy(np.ones((2, 3)))


def test_plot_compat_matrix_writes_png(tmp_path: Path) -> None:
    out = plot_compat_matrix(MATRIX, ["v1", "v2", "v3"], tmp_path / "sub" / "m.png", "top1")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        plot_compat_matrix(MATRIX, ["v1"], tmp_path / "bad.png", "x")
