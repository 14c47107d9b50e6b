"""Adapters: each kind recovers a known map; a real MiniLM-L3 gallery upgrades to MiniLM-L6 through
one; bad input is one error line and writes nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from compatret.adapt.fit import fit_kinds, neighbour_recall
from compatret.cli import main
from compatret.errors import CompatretError
from compatret.index.service import Service
from compatret.versions import LearnedMap, normalize


def synthetic(kind: str, n: int = 3000, d_in: int = 24, d_out: int = 32) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """x and y = f(x) for a known f of the kind (semi-orthogonal; affine with bias; affine + ReLU layer)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d_in)).astype(np.float32)
    q, _ = np.linalg.qr(rng.normal(size=(d_out, d_out)))
    w = q[:d_in].astype(np.float32)  # rows orthonormal: a semi-orthogonal map
    if kind == "procrustes":
        y = x @ w
    else:
        a = rng.normal(size=(d_in, d_out)).astype(np.float32)
        y = x @ a + rng.normal(size=d_out).astype(np.float32)
        if kind == "mlp":
            w1 = rng.normal(size=(d_in, 16)).astype(np.float32)
            y = y + 0.5 * np.maximum(x @ w1, 0) @ rng.normal(size=(16, d_out)).astype(np.float32)
    return x[:2400], y[:2400], x[2400:], y[2400:]


@pytest.mark.parametrize("kind", ["procrustes", "affine", "mlp"])
def test_each_kind_recovers_a_known_map(kind):
    x, y, xh, yh = synthetic(kind)
    held = np.arange(len(x) + len(xh)) >= len(x)
    found = {c.kind: c for c in fit_kinds(np.vstack([x, xh]), np.vstack([y, yh]), held, gallery_side=True)}
    best = found[kind]
    cos = np.sum(normalize(best.fitted(xh)) * normalize(yh), axis=1)
    assert cos.mean() > (0.999 if kind != "mlp" else 0.98)
    assert best.held_out_recall >= max(c.held_out_recall for c in found.values()) - 0.02  # the kind that made the data is (about) the best
    if kind == "procrustes":
        xa, ya = np.vstack([x, xh]), np.vstack([y, yh])  # the final map is fitted on every pair
        u, _, vt = np.linalg.svd(xa.T @ ya, full_matrices=False)
        np.testing.assert_allclose(best.fitted.weight, u @ vt, atol=1e-4)
    if kind == "mlp":  # the residual layer earns its place: better than the affine map on what is not linear
        assert found["mlp"].held_out_cosine > found["affine"].held_out_cosine + 0.005


def test_rank_deficient_vectors_get_a_bounded_map():
    """Two directions of x never vary (as in all-MiniLM-L6-v2's vectors): plain least squares
    (ridge 0) returns weights of ~1e13 there that cancel on the fitted rows and wreck any new row."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 24)).astype(np.float32)
    x[:, 0] = 0.5  # a constant dim: collinear with the bias column
    x[:, 1] = 2 * x[:, 2]  # a copy of another dim
    y = x @ rng.normal(size=(24, 16)).astype(np.float32)
    held = np.arange(2000) >= 1600
    for c in fit_kinds(x, y, held, gallery_side=True, kinds=("affine", "mlp")):
        assert np.abs(c.fitted.weight).max() < 10, c.kind
        off = x[:5] + rng.normal(scale=0.1, size=(5, 24)).astype(np.float32)  # rows off the fitted manifold
        assert np.all(np.isfinite(c.fitted(off))) and np.abs(c.fitted(off)).max() < 100


def test_learned_map_round_trips_through_npz(tmp_path):
    m = LearnedMap(np.eye(3, dtype=np.float32) * 2, np.ones(3, np.float32), np.ones((3, 2), np.float32), np.zeros(2, np.float32),
                   np.ones((2, 3), np.float32))
    m.save(tmp_path / "m.npz")
    back = LearnedMap.load(tmp_path / "m.npz")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(back(x), m(x))


def test_neighbour_recall_sees_a_ranking_change():
    rng = np.random.default_rng(0)
    q, c = normalize(rng.normal(size=(20, 8))), normalize(rng.normal(size=(200, 8)))
    assert neighbour_recall(q, q, c, c) == 1.0
    assert neighbour_recall(q, q, c[::-1], c) < 0.2  # the same vectors under other labels rank other rows


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "compatret", *args], capture_output=True, text=True, timeout=600)


def in_process(*args: str) -> subprocess.CompletedProcess[str]:
    """The same CLI without a new interpreter's imports (seconds a call): for the steps after a real run."""
    r = CliRunner().invoke(main, list(args))
    return subprocess.CompletedProcess(list(args), r.exit_code, r.stdout, r.stderr)


@pytest.fixture(scope="module")
def l3_gallery(tmp_path_factory, scifact_subset):
    """300 SciFact abstracts embedded by MiniLM-L3 (ONNX)."""
    root = tmp_path_factory.mktemp("adapt")
    s = Service.create(root / "l3", model="minilm-l3")
    s.add_items(scifact_subset["docs"], progress=False)
    return root


def test_l3_gallery_upgrades_to_l6_through_an_adapter(l3_gallery, scifact_subset, tmp_path):
    g = tmp_path / "l3"
    shutil.copytree(l3_gallery / "l3", g)  # the module's gallery stays on minilm-l3
    done = run("adapt", str(g), "--model", "minilm-l6", "--out", str(tmp_path / "ad"), "--sample", "200", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["direction"] == "gallery" and report["sample"] == 200 and report["held_aside"] > 20
    assert {k["kind"] for k in report["kinds"]} == {"procrustes", "affine", "mlp"}
    assert report["kind"] == max(report["kinds"], key=lambda k: round(k["held_out_recall"], 3))["kind"]
    before = Service.open(g).gallery.latest_version()

    up = in_process("index", "upgrade", str(g), "--model", str(tmp_path / "ad"), "--json")  # `adapt` above ran as a real process
    assert up.returncode == 0, up.stderr
    s = Service.open(g)
    assert s.meta.serving.id == report["model_id"] and s.meta.serving.compat.kind == "transform"
    assert s.gallery.latest_version() == before + 1  # one metadata commit, nothing re-embedded
    assert s.rows_by_plan() == {"mapped": len(scifact_subset["docs"])}
    docs = scifact_subset["docs"]
    from compatret.encoders.registry import load_encoder

    texts = [f"{d['title']} {d['text']}" for d in docs]
    l6 = load_encoder("minilm-l6").encode_queries(texts)  # each document's own text as its query, encoded once
    found = [r.ids[0] for r in s.query(vectors=l6, model=s.meta.serving.id, k=1)]  # L6 queries against the L3 rows mapped into L6's space
    assert [r.ids[0] for r in s.query(texts=texts[:20], k=1)] == found[:20]  # the text path encodes as L6 does
    mapped = np.mean([f == d["id"] for f, d in zip(found, docs)])
    stored = s.gallery.vectors_by_id()
    raw = np.mean(np.argmax(l6 @ np.stack([stored[d["id"]][1] for d in docs]).T, axis=1) == np.arange(len(docs)))
    assert mapped > raw + 0.1, (mapped, raw)  # without the map, L6 reads L3 vectors poorly (0.52 here; 0.67 mapped)

    other = tmp_path / "l6"
    Service.create(other, model="minilm-l6")
    refused = in_process("index", "upgrade", str(other), "--model", str(tmp_path / "ad"))
    assert refused.returncode == 2 and refused.stderr.startswith("error:") and len(refused.stderr.strip().splitlines()) == 1
    assert "minilm-l3" in refused.stderr


def test_query_direction_keeps_the_stored_space(l3_gallery, scifact_subset, tmp_path):
    done = run("adapt", str(l3_gallery / "l3"), "--model", "minilm-l6", "--out", str(tmp_path / "q"), "--budget", "0.001",
               "--direction", "query", "--kind", "affine", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["direction"], report["kind"]) == ("query", "affine")
    assert report["sample"] == 256  # the budget ran out after the first batch of 256 of the 300 rows
    from compatret.encoders.registry import load_encoder, load_version

    version = load_version(str(tmp_path / "q"))
    assert version.compat.kind == "identity" and version.parent is not None and version.parent.id == "minilm-l3"
    enc = load_encoder(str(tmp_path / "q"))
    docs = scifact_subset["docs"][250:300]
    own = Service.open(l3_gallery / "l3").gallery.vectors_by_id()
    mine = enc.encode_items([{"title": d["title"], "text": d["text"]} for d in docs])
    cos = np.mean([float(own[d["id"]][1] @ v) for d, v in zip(docs, mine)])
    assert cos > 0.8  # L6's vectors land next to the L3 vectors stored for the same documents

    from compatret.train.text.model_io import load_trainable  # ADORE's --init: training starts where the adapter serves

    start = load_trainable(str(tmp_path / "q")).encode([f"{d['title']} {d['text']}" for d in docs], convert_to_numpy=True)
    assert np.abs(start - mine).max() < 1e-4


def test_an_mlp_adapter_is_refused_as_training_start(tmp_path):
    from compatret.encoders.base import write_encoder_config
    from compatret.train.text.model_io import load_trainable

    rng = np.random.default_rng(0)
    LearnedMap(np.eye(384, dtype=np.float32), np.zeros(384, np.float32), rng.normal(size=(384, 8)).astype(np.float32),
               np.zeros(8, np.float32), rng.normal(size=(8, 384)).astype(np.float32)).save(tmp_path / "head.npz")
    write_encoder_config(tmp_path, "adapted", base="minilm-l6", head="head.npz")
    with pytest.raises(CompatretError, match="head is an MLP"):
        load_trainable(str(tmp_path))


def test_bad_input_is_one_error_line_and_writes_nothing(l3_gallery, tmp_path, digit_models):
    bare = tmp_path / "bare"
    Service.create(bare, dim=384, version_id="v1").add_vectors(normalize(np.random.default_rng(0).normal(size=(50, 384))))
    cases = [
        ([str(bare), "--model", "minilm-l6"], "payload"),
        ([str(l3_gallery / "l3"), "--model", digit_models["v1"]], "is for image"),
        ([str(l3_gallery / "l3"), "--model", "minilm-l6", "--sample", "5000"], "larger than"),
        ([str(l3_gallery / "l3"), "--model", "minilm-l6", "--budget", "0"], "--budget"),
    ]
    for n, (args, message) in enumerate(cases):
        out = tmp_path / f"out{n}"
        call = run if n == 0 else in_process  # one real process; the rest need no new interpreter
        done = call("adapt", *args, "--out", str(out))
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("error:") and message in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert not out.exists() and not list(tmp_path.glob(f".out{n}.tmp-*"))


def test_a_chain_adapter_then_prefix_composes_on_one_gallery(tmp_path):
    """v1 -> (fitted map, .npz) v2 -> (prefix, BT²-style) v3: v3's queries read v1's stored rows
    through both rules (the map, then the shared dims), the map file copied in by `upgrade`."""
    from compatret import Compat, ModelVersion
    from compatret.adapt.fit import fit_affine

    rng = np.random.default_rng(0)
    x = normalize(rng.normal(size=(400, 8)))
    a, b = rng.normal(size=(8, 8)).astype(np.float32), rng.normal(size=8).astype(np.float32)
    mapped = x @ a + b  # what v2 embeds for the same items
    v1 = ModelVersion("v1", 8, "vector", method="external")
    v2 = ModelVersion("v2", 8, "vector", parent=v1, compat=Compat.transform("transforms/v2.npz"), method="adapter")
    v3 = ModelVersion("v3", 12, "vector", parent=v2, compat=Compat.prefix(8), method="bt2")
    d2, d3 = tmp_path / "v2", tmp_path / "v3"
    (d2 / "transforms").mkdir(parents=True)
    fit_affine(x, mapped, 1e-6).save(d2 / "transforms" / "v2.npz")
    v2.save(d2)
    (d3 / "transforms").mkdir(parents=True)
    shutil.copy(d2 / "transforms" / "v2.npz", d3 / "transforms" / "v2.npz")  # a model folder carries its lineage's maps
    v3.save(d3)
    s = Service.create(tmp_path / "g", dim=8, version_id="v1")
    s.add_vectors(x, ids=[str(i) for i in range(400)])
    s.upgrade(str(d2))
    s.upgrade(str(d3))
    q = np.hstack([normalize(mapped[:50]), 0.1 * rng.normal(size=(50, 4)).astype(np.float32)])
    hits = s.query(vectors=q, k=1)
    assert [r.ids[0] for r in hits] == [str(i) for i in range(50)]
    assert s.plan().gallery_transforms and s.plan().dims == 8
