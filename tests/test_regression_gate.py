"""`eval regression` and `index upgrade --gate`: intervals that cover a known difference, flips
counted by hand, a refused upgrade that changes nothing, bad input as one error line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
from text_env import text_env  # noqa: F401

from compatret.evaluation.regression import negative_flips, paired_bootstrap, per_query
from compatret.engine.service import Service


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "compatret", *args], capture_output=True, text=True, timeout=600)


def one_error_line(done: subprocess.CompletedProcess[str], message: str) -> None:
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and len(done.stderr.strip().splitlines()) == 1 and message in done.stderr, done.stderr


def test_bootstrap_interval_covers_a_known_difference_on_synthetic_rankings():
    """400 queries, one relevant document each: the serving run has it at rank 1 for half of them
    (else rank 3), the candidate for 60 % (MRR@10 differs by exactly 0.1 * (1 - 1/3))."""
    rng = np.random.default_rng(0)
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(400)}

    def run_with(top: np.ndarray) -> dict:
        return {f"q{i}": ({f"d{i}": 3.0, "x": 2.0, "y": 1.0} if t else {"x": 3.0, "y": 2.0, f"d{i}": 1.0}) for i, t in enumerate(top)}

    serving_top = np.arange(400) < 200
    candidate_top = serving_top.copy()
    candidate_top[rng.choice(np.flatnonzero(~serving_top), 40, replace=False)] = True  # 40 more queries at rank 1
    s, c = per_query(qrels, run_with(serving_top)), per_query(qrels, run_with(candidate_top))
    diff = np.array([c["mrr_at_10"][q] - s["mrr_at_10"][q] for q in sorted(qrels)])
    known = 40 / 400 * (1 - 1 / 3)
    interval = paired_bootstrap(diff)
    assert interval.mean == pytest.approx(known)
    assert interval.low < known < interval.high and interval.low > 0  # covers the truth, and says it is a gain
    same = paired_bootstrap(np.zeros(400))
    assert same.low == same.high == 0.0


def test_negative_flips_are_queries_that_lose_their_top_k_hit():
    qrels = {"a": {"1": 1}, "b": {"2": 1}, "c": {"3": 1}, "d": {"4": 1}}
    serving = {"a": {"1": 0.9}, "b": {"2": 0.9}, "c": {"x": 0.9}, "d": {"4": 0.9}}
    candidate = {"a": {"1": 0.9}, "b": {"x": 0.9}, "c": {"3": 0.9}, "d": {**{f"n{i}": 1.0 - i / 100 for i in range(10)}, "4": 0.5}}
    assert negative_flips(qrels, serving, candidate) == ["b", "d"]  # b lost it; d pushed it to rank 11; c gained one


@pytest.fixture(scope="module")
def judged(text_env, tmp_path_factory):  # noqa: F811
    """The test env's queries and the judgements of the documents its gallery holds."""
    held = set(Service.open(text_env.gallery).gallery.vectors_by_id())
    rows = [r for r in (text_env.beir / "qrels" / "test.tsv").read_text().splitlines()[1:] if r.split("\t")[1] in held]
    qrels = tmp_path_factory.mktemp("judged") / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return str(text_env.beir / "queries.jsonl"), str(qrels)


@pytest.fixture(scope="module")
def damaged(text_env, tmp_path_factory):  # noqa: F811
    """An ADORE model compatible by construction whose query tower a learning rate of 0.5 wrecked."""
    from compatret.train.text.config import RetrieverConfig
    from compatret.train.text.trainer import train_retriever

    out = tmp_path_factory.mktemp("damaged") / "adore"
    cfg = RetrieverConfig(method="adore", old="minilm-l6", gallery=str(text_env.gallery), train_data=str(text_env.beir), out=str(out),
                          batch_size=4, max_seq_length=32, depth=20, lr=0.5, max_steps=3)
    return train_retriever(cfg, progress=False)


def test_a_gate_refusal_changes_nothing_and_a_pass_is_recorded(text_env, judged, damaged, tmp_path):  # noqa: F811
    g = tmp_path / "g"
    shutil.copytree(text_env.gallery, g)
    before = Service.open(g).gallery.latest_version()
    queries, qrels = judged
    refused = run("index", "upgrade", str(g), "--model", str(damaged), "--gate", queries, "--qrels", qrels)
    one_error_line(refused, "gate: ")
    s = Service.open(g)
    assert s.gallery.latest_version() == before and s.meta.serving.id == "minilm-l6"

    report = run("eval", "regression", "--gallery", str(g), "--candidate", str(damaged), "--queries", queries, "--qrels", qrels,
                 "--out", str(tmp_path / "r"), "--json")
    assert report.returncode == 0, report.stderr
    numbers = json.loads(report.stdout)
    assert numbers["differences"]["ndcg_at_10"]["high"] < 0 and (tmp_path / "r" / "per_query.png").stat().st_size > 0

    from compatret.engine.gate import gate_check

    Service.open(g).upgrade("minilm-l6", gate=gate_check(g, "minilm-l6", queries, qrels))  # the same model: no drop
    s = Service.open(g)
    assert s.gallery.latest_version() == before + 1
    gate = s.meta.history[-1]["gate"]  # the numbers of the gate that let it through
    assert gate["serving"] == "minilm-l6" and gate["ndcg_at_10"]["mean"] == 0.0 and gate["negative_flip_rate"] == 0.0


def test_gate_bad_input_is_one_error_line(text_env, judged, damaged, tmp_path, digit_models):  # noqa: F811
    queries, qrels = (Path(p) for p in judged)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    unknown = tmp_path / "unknown.tsv"
    unknown.write_text("query-id\tcorpus-id\tscore\n" + qrels.read_text().splitlines()[1].split("\t")[0] + "\tno-such-doc\t1\n")
    images = Service.create(tmp_path / "img", model=digit_models["v1"])
    images.add_items(digit_models["items"][:10], progress=False)
    cases = [
        ([str(text_env.gallery), str(damaged), str(empty), str(qrels)], "holds no queries"),
        ([str(text_env.gallery), str(damaged), str(queries), str(unknown)], "documents the gallery lacks"),
        ([str(tmp_path / "img"), digit_models["v2"], str(queries), str(qrels)], "image"),
    ]
    for (gallery, model, q, r), message in cases:
        before = Service.open(gallery).gallery.latest_version()
        one_error_line(run("index", "upgrade", gallery, "--model", model, "--gate", q, "--qrels", r), message)
        assert Service.open(gallery).gallery.latest_version() == before
    one_error_line(run("index", "upgrade", str(text_env.gallery), "--model", str(damaged), "--gate", str(queries)), "needs both")


def test_without_qrels_it_reports_how_much_the_rankings_agree(text_env, judged, damaged, tmp_path):  # noqa: F811
    queries, _ = judged
    from compatret.cli.regression import run_regression

    same_report = run_regression(str(text_env.gallery), "minilm-l6", queries, None, tmp_path / "same")
    assert same_report["differences"] == {} and same_report["agreement"]["overlap_at_k"] == 1.0
    assert same_report["agreement"]["rank_correlation"] == pytest.approx(1.0)
    other = run("eval", "regression", "--gallery", str(text_env.gallery), "--candidate", str(damaged), "--queries", queries,
                "--out", str(tmp_path / "other"), "--json")
    report = json.loads(other.stdout)
    assert report["agreement"]["overlap_at_k"] < 0.5 and report["most_changed"][0]["change"] <= report["agreement"]["overlap_at_k"]
    assert (tmp_path / "other" / "per_query.png").stat().st_size > 0


def test_http_upgrade_gate_uses_the_operators_stored_queries(text_env, judged, damaged, tmp_path):  # noqa: F811
    from fastapi.testclient import TestClient

    from compatret.server.app import create_app

    g = tmp_path / "g"
    shutil.copytree(text_env.gallery, g)
    models = tmp_path / "models"
    shutil.copytree(damaged, models / "wrecked")
    c = TestClient(create_app(g, refresh_seconds=0.0, models_dir=models))
    before = Service.open(g).gallery.latest_version()
    missing = c.post("/upgrade", json={"model": "wrecked", "gate": True})
    assert missing.status_code == 400 and "compatret index gate" in missing.json()["detail"]
    bad = run("index", "gate", str(g), "--queries", str(tmp_path / "nope.jsonl"), "--qrels", judged[1])
    one_error_line(bad, "no query file")
    stored = run("index", "gate", str(g), "--queries", judged[0], "--qrels", judged[1])
    assert stored.returncode == 0, stored.stderr
    refused = c.post("/upgrade", json={"model": "wrecked", "gate": True})
    assert refused.status_code == 400 and refused.json()["detail"].startswith("gate: ")
    assert c.post("/upgrade", json={"model": "wrecked", "gate": True, "gate_path": "/etc/passwd"}).status_code == 422  # no server paths
    s = Service.open(g)
    assert s.gallery.latest_version() == before and s.meta.serving.id == "minilm-l6"
    passed = c.post("/upgrade", json={"model": "minilm-l6", "gate": True})
    assert passed.status_code == 200 and passed.json()["gate"]["negative_flip_rate"] == 0.0


@pytest.fixture(scope="module")
def towers(text_env, tmp_path_factory):  # noqa: F811
    """A gallery of 60 SciFact documents with text, its judgements, and models that all query exactly
    as all-MiniLM-L6-v2 cut to 32 tokens (`short`, the gallery's model): `same` embeds items that way
    too; `worse_items` (its child) embeds them with a tower wrecked by noise. The upgrade gate cannot
    tell the two apart (queries unchanged on old vectors); only a gated backfill sees the second's rows."""
    import torch

    from compatret.train.text.model_io import load_trainable, save_retriever
    from compatret.core.lineage import Compat, ModelVersion

    def tower(noise: float = 0.0):  # noqa: ANN202
        model = load_trainable("minilm-l6")
        model.max_seq_length = 32
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(noise * torch.randn(p.shape, generator=gen))
        return model

    root = tmp_path_factory.mktemp("towers")
    short = ModelVersion("l6-short", 384, "text", method="all-MiniLM-L6-v2 at 32 tokens")
    same = ModelVersion("l6-same", 384, "text", parent=short, compat=Compat.identity(), method="the same weights, another name")
    worse = ModelVersion("l6-worse-items", 384, "text", parent=same, compat=Compat.identity(), method="wrecked item tower")
    save_retriever(tower(), root / "short", short)
    save_retriever(tower(), root / "same", same)
    save_retriever(tower(0.1), root / "wrecked-items", ModelVersion("wrecked-items", 384, "text", method="noise"))
    save_retriever(tower(), root / "worse", worse, item_encoder=str(root / "wrecked-items"))
    docs = [json.loads(line) for line in (text_env.beir / "corpus.jsonl").read_text().splitlines()]
    judged_docs = set().union(*text_env.qrels.values())
    keep = [d for d in docs if d["_id"] in judged_docs] + [d for d in docs if d["_id"] not in judged_docs][: 60 - len(judged_docs)]
    Service.create(root / "g", model=str(root / "short")).add_items(
        [{"id": d["_id"], "title": d["title"], "text": d["text"]} for d in keep], progress=False)
    qrels = root / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q, ds in text_env.qrels.items() for d in sorted(ds)))
    return {"gallery": root / "g", "queries": str(text_env.beir / "queries.jsonl"), "qrels": str(qrels),
            "same": str(root / "same"), "worse": str(root / "worse")}


def test_gated_backfill_checks_each_checkpoint_and_stops_resumably_when_rows_regress(towers, tmp_path):
    from compatret.engine.gate import BackfillGate, gate_check, gated_backfill
    from compatret.engine.backfill import backfill

    g = tmp_path / "g"
    shutil.copytree(towers["gallery"], g)
    gate = ["--gate", towers["queries"], "--qrels", towers["qrels"]]
    Service.open(g).upgrade(towers["same"])
    checked = BackfillGate.open(g, towers["queries"], towers["qrels"])
    steps = gated_backfill(checked, lambda f: backfill(Service.open(g), None, f, batch_size=6, progress=False), cap=0.3)
    assert [s["fraction"] for s in steps] == [0.1, 0.3] and all(s["gate"]["passed"] for s in steps)
    assert steps[-1]["gate"]["change"]["mean"] == pytest.approx(0.0, abs=1e-9)  # the same vectors under another name
    assert Service.open(g).rows_by_version()["l6-same"] == 18

    gate_check(g, towers["worse"], towers["queries"], towers["qrels"])  # its queries are the old ones: the upgrade gate passes
    Service.open(g).upgrade(towers["worse"])
    stopped = run("index", "backfill", str(g), *gate, "--batch-size", "6", "--json")
    one_error_line(stopped, "% of rows backfilled the gallery serves the gate queries worse")
    steps = json.loads(stopped.stdout)["steps"]
    assert not steps[-1]["gate"]["passed"] and steps[-1]["fraction"] < 1.0 and all(s["gate"]["passed"] for s in steps[:-1])
    worse_rows = Service.open(g).rows_by_version()["l6-worse-items"]
    assert 6 <= worse_rows <= 30 and worse_rows == sum(s["report"]["done"] for s in steps)  # stopped at a checkpoint, batches kept
    backfill(Service.open(g), progress=False)  # without the gate, a rerun goes on from there
    assert Service.open(g).rows_by_version() == {"l6-worse-items": 60}
    one_error_line(run("index", "backfill", str(g), "--gate", towers["queries"]), "needs both")
    one_error_line(run("index", "backfill", str(g), *gate, "--limit", "5"), "--fraction, not --limit")


def test_the_gate_and_the_regression_report_on_a_sharded_gallery(text_env, judged, damaged, tmp_path):  # noqa: F811
    from compatret.engine.sharded import ShardedService

    rows = Service.open(text_env.gallery).gallery.vectors_by_id()
    ids = sorted(rows)
    sharded = ShardedService.create(tmp_path / "s", 3, model="minilm-l6")
    sharded.add_vectors(np.stack([rows[i][1] for i in ids]), ids=ids)
    before = sharded.snapshot.snapshot
    queries, qrels = judged
    refused = run("index", "upgrade", str(tmp_path / "s"), "--model", str(damaged), "--gate", queries, "--qrels", qrels)
    one_error_line(refused, "gate: ")
    assert ShardedService.open(tmp_path / "s").snapshot.snapshot == before  # nothing changed
    reports = [json.loads(run("eval", "regression", "--gallery", str(g), "--candidate", str(damaged), "--queries", queries,
                              "--qrels", qrels, "--json").stdout) for g in (text_env.gallery, tmp_path / "s")]  # fmt: skip
    assert {k: reports[1][k] for k in ("serving_scores", "candidate_scores", "differences", "negative_flips")} == {
        k: reports[0][k] for k in ("serving_scores", "candidate_scores", "differences", "negative_flips")}
    passed = run("index", "upgrade", str(tmp_path / "s"), "--model", "minilm-l6", "--gate", queries, "--qrels", qrels, "--json")
    assert passed.returncode == 0, passed.stderr
    assert json.loads(passed.stdout)["gate"]["negative_flip_rate"] == 0.0
    after = ShardedService.open(tmp_path / "s")
    assert after.snapshot.snapshot == before + 1 and all(s.meta.history[-1]["gate"]["serving"] == "minilm-l6" for s in after.shards)


def test_a_gated_backfill_of_a_sharded_gallery_stops_where_its_rows_regress(towers, tmp_path):
    from compatret.engine.sharded import ShardedService
    from compatret.store.gallery import Gallery

    items = Gallery.open(towers["gallery"]).scan(["id", "title", "text"]).to_pylist()
    s = ShardedService.create(tmp_path / "s", 2, model=str(Path(towers["same"]).parent / "short"))
    s.add_items(items, progress=False)
    s.upgrade(towers["worse"])
    began = s.snapshot.snapshot
    stopped = run("index", "backfill", str(tmp_path / "s"), "--gate", towers["queries"], "--qrels", towers["qrels"], "--batch-size", "6",
                  "--json")  # fmt: skip
    one_error_line(stopped, "% of rows backfilled the gallery serves the gate queries worse")
    assert f"index rollback {tmp_path / 's'} --to {began}` restores" in stopped.stderr
    steps = json.loads(stopped.stdout)["steps"]
    assert not steps[-1]["gate"]["passed"] and steps[-1]["fraction"] < 1.0
    assert ShardedService.open(tmp_path / "s").rows_by_version()["l6-worse-items"] == sum(st["report"]["done"] for st in steps)
    assert run("index", "rollback", str(tmp_path / "s"), "--to", str(began)).returncode == 0
    assert ShardedService.open(tmp_path / "s").rows_by_version() == {"l6-short": 60}
