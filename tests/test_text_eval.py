"""BEIR loading and retrieval metrics: ranx-backed scores on a hand-made run, and a real (model, gallery) pair."""

from __future__ import annotations

import math

import pytest
from text_env import text_env  # noqa: F401

from compatret.data.beir import load_beir
from compatret.core.errors import CompatretError
from compatret.engine.runs import evaluate_pair
from compatret.evaluation.retrieval import score_run


def test_metrics_match_hand_computed_run():
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"c": 1}, "q3": {"z": 1}}
    run = {"q1": {"x": 3.0, "a": 2.0, "y": 1.0}, "q2": {"c": 1.0}, "q3": {}}
    got = score_run(qrels, run)
    # q1: a at rank 2 of 2 relevant; q2: perfect; q3: nothing retrieved counts as zero
    ndcg_q1 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert got["ndcg_at_10"] == pytest.approx((ndcg_q1 + 1 + 0) / 3)
    assert got["mrr_at_10"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert got["recall_at_100"] == pytest.approx((0.5 + 1 + 0) / 3)


def test_load_beir_and_split(text_env):  # noqa: F811
    data = load_beir(text_env.beir)
    assert len(data.corpus) == sum(1 for _ in (text_env.beir / "corpus.jsonl").open())
    assert set(data.qrels) == {"train", "test"}
    assert set(data.split("test")) == set(text_env.qrels)
    with pytest.raises(CompatretError):
        data.split("dev")
    with pytest.raises(CompatretError):
        load_beir(text_env.beir / "missing")


def test_evaluate_pair_reads_the_gallery(text_env):  # noqa: F811
    data = load_beir(text_env.beir)
    scores = evaluate_pair("minilm-l6", text_env.gallery, data, "test")
    assert set(scores) == {"ndcg_at_10", "mrr_at_10", "recall_at_100"}
    assert 0.5 < scores["ndcg_at_10"] <= 1.0 and scores["recall_at_100"] > 0.9
    with pytest.raises(CompatretError):  # minilm-l3 does not descend from the gallery's model
        evaluate_pair("minilm-l3", text_env.gallery, data, "test")
