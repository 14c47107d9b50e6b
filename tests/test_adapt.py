"""Adapters: each kind recovers a known map; a real MiniLM-L3 gallery upgrades to MiniLM-L6 through
one; bad input is one error line and writes nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from compatret.adapt.fit import RIDGE_GRID, fit_one
from compatret.adapt.sample import CALL_SECONDS
from compatret.adapt.select import Option, Probe, cross_fitted_scores, estimate, options, served_scores, stay_scores
from compatret.cli.main import main
from compatret.core.errors import CompatretError
from compatret.engine.service import Service
from compatret.core.transforms import LearnedMap, normalize


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
    fitted = {k: fit_one(k, x, y) for k in ("affine", kind)}
    cos = np.sum(normalize(fitted[kind](xh)) * normalize(yh), axis=1)
    assert cos.mean() > (0.999 if kind != "mlp" else 0.98)
    if kind == "procrustes":
        u, _, vt = np.linalg.svd(x.T @ y, full_matrices=False)
        np.testing.assert_allclose(fitted[kind].weight, u @ vt, atol=1e-4)
    if kind == "mlp":  # the residual layer earns its place: better than the affine map on what is not linear
        affine = np.sum(normalize(fitted["affine"](xh)) * normalize(yh), axis=1)
        assert cos.mean() > affine.mean() + 0.005


def test_rank_deficient_vectors_get_a_bounded_map():
    """Two directions of x never vary (as in all-MiniLM-L6-v2's vectors): plain least squares
    (ridge 0) returns weights of ~1e13 there that cancel on the fitted rows and wreck any new row."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 24)).astype(np.float32)
    x[:, 0] = 0.5  # a constant dim: collinear with the bias column
    x[:, 1] = 2 * x[:, 2]  # a copy of another dim
    y = x @ rng.normal(size=(24, 16)).astype(np.float32)
    for kind in ("affine", "mlp"):
        m = fit_one(kind, x, y, RIDGE_GRID[0], epochs=5)
        assert np.abs(m.weight).max() < 10, kind
        off = x[:5] + rng.normal(scale=0.1, size=(5, 24)).astype(np.float32)  # rows off the fitted manifold
        assert np.all(np.isfinite(m(off))) and np.abs(m(off)).max() < 100


def test_learned_map_round_trips_through_npz(tmp_path):
    m = LearnedMap(np.eye(3, dtype=np.float32) * 2, np.ones(3, np.float32), np.ones((3, 2), np.float32), np.zeros(2, np.float32),
                   np.ones((2, 3), np.float32))
    m.save(tmp_path / "m.npz")
    back = LearnedMap.load(tmp_path / "m.npz")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(back(x), m(x))


def overfit_case(n: int = 60, d: int = 64, noise: float = 1.0, seed: int = 0, paired_share: float = 0.01,
                 query_noise: float = 0.5) -> tuple[Probe, np.ndarray, np.ndarray]:
    """Few pairs in many dims, y = x R + heavy noise: an affine map with a tiny ridge interpolates
    the pairs (noise and all); what serves unseen rows is a strong ridge or the rotation. Returns
    the probe (rows with pseudo-queries: the row's own y plus noise; `paired_share` of the
    gallery's rows are these pairs) and fresh (x, y) rows."""
    rng = np.random.default_rng(seed)
    r, _ = np.linalg.qr(rng.normal(size=(d, d)))
    def rows(m: int) -> tuple[np.ndarray, np.ndarray]:
        x = normalize(rng.normal(size=(m, d)))
        return x, normalize(x @ r + noise * rng.normal(size=(m, d)) / np.sqrt(d))
    x, y = rows(n)
    q_new = normalize(y + query_noise * rng.normal(size=y.shape) / np.sqrt(d))
    q_old = normalize(x + query_noise * rng.normal(size=x.shape) / np.sqrt(d))
    probe = Probe(x.astype(np.float32), y.astype(np.float32), q_old.astype(np.float32), q_new.astype(np.float32),
                  np.zeros((0, d), np.float32), rng.permutation(np.arange(n) % 3), paired_share)
    return probe, *rows(2000)


def served(m: LearnedMap, x: np.ndarray, y: np.ndarray) -> float:
    """How well a map serves unseen rows: each true y finds its own mapped x (top-1)."""
    return float(np.mean(np.argmax(normalize(y) @ normalize(m(x)).T, axis=1) == np.arange(len(x))))


def test_the_choice_is_made_out_of_sample():
    """The old criterion scored a map with the rows it was fitted on as candidates: a nearly
    interpolating affine map (ridge 1e-4) won it. Cross-fitted pseudo-queries pick a map that
    serves unseen rows about as well as the best option does."""
    probe, fx, fy = overfit_case()
    opts = options(("gallery",), ("procrustes", "affine"))
    every = np.arange(len(probe.old))
    maps = {o: fit_one(o.kind, probe.old, probe.new, o.ridge) for o in opts}
    in_sample = {o: float(np.mean(np.sum(normalize(m(probe.old)) * probe.new, axis=1))) for o, m in maps.items()}  # fitted rows' cosine
    unseen = {o: served(m, fx[:200], fy[:200]) for o, m in maps.items()}
    tiny = Option("gallery", "affine", RIDGE_GRID[0])
    assert max(in_sample, key=in_sample.get) == tiny and unseen[tiny] < max(unseen.values()) - 0.1  # the trap is real
    cross = {o: served_scores(probe, o).mean() for o in opts}  # 1 % of the gallery's rows are paired: unseen rows dominate
    chosen = max(cross, key=cross.get)
    assert chosen != tiny and unseen[chosen] >= max(unseen.values()) - 0.03, (chosen, unseen)
    assert len(served_scores(probe, chosen)) == len(stay_scores(probe)) == int(probe.queried.sum()) == len(every)


def test_the_estimate_weighs_rows_the_map_was_fitted_on():
    """When every row of the gallery is paired (a small gallery), the map that reproduces its pairs
    most closely serves best, and the served estimate follows: a tiny ridge scores above a strong
    one on seen rows, though not on unseen ones."""
    probe, _, _ = overfit_case(n=100, noise=1.0, paired_share=1.0, query_noise=2.0)
    tight, loose = Option("gallery", "affine", RIDGE_GRID[0]), Option("gallery", "affine", RIDGE_GRID[-1])
    assert served_scores(probe, tight).mean() > served_scores(probe, loose).mean() + 0.03
    assert cross_fitted_scores(probe, tight).mean() < cross_fitted_scores(probe, loose).mean() - 0.03
    unseen_only = Probe(*[getattr(probe, f) for f in ("old", "new", "q_old", "q_new", "others", "folds")], 0.0)
    assert np.allclose(served_scores(unseen_only, tight), cross_fitted_scores(probe, tight))


def test_the_estimate_sees_a_map_worse_than_staying():
    """Staying (old queries on stored rows) against a map, as served: a map of pure noise is
    estimated worse than staying with its whole interval below 0, and below the real map."""
    probe, _, _ = overfit_case(n=300, noise=0.3, paired_share=0.5)
    stay = stay_scores(probe)
    good = estimate(stay, served_scores(probe, Option("gallery", "procrustes")))
    noise = estimate(stay, served_scores(probe, Option("gallery", "procrustes"),
                                         lambda o, x, y: fit_one("procrustes", x, np.random.default_rng(1).normal(size=y.shape))))
    assert noise.change.high < 0 and noise.change.high < good.change.low


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
    # 200 pairs are too few for a map that beats staying on L3 (the estimate says so): --force writes it anyway
    done = in_process("adapt", str(g), "--model", "minilm-l6", "--out", str(tmp_path / "ad"), "--sample", "200", "--kind", "affine", "--force", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["direction"] == "gallery" and report["sample"] == 200 and report["query_source"] == "titles"
    assert len(report["options"]) == 4  # one per ridge strength
    assert report["ridge"] == max(report["options"], key=lambda o: round(o["pseudo_ndcg"], 4))["ridge"]
    est = report["estimate"]
    assert est["queries"] == report["pseudo_queries"] // 2 > 50  # one half chose the map, the other estimates it
    assert est["low"] <= est["change"] <= est["high"]
    assert report["forced"] == (est["change"] < 0)
    before = Service.open(g).gallery.latest_version()

    up = in_process("index", "upgrade", str(g), "--model", str(tmp_path / "ad"), "--json")
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
    assert "minilm-l3" in refused.stderr and f"compatret adapt {other} --model {tmp_path / 'ad'}" in refused.stderr  # the way that works


def test_query_direction_keeps_the_stored_space(l3_gallery, scifact_subset, tmp_path):
    done = in_process("adapt", str(l3_gallery / "l3"), "--model", "minilm-l6", "--out", str(tmp_path / "q"), "--force",
                      "--direction", "query", "--kind", "affine", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["direction"], report["kind"]) == ("query", "affine")
    assert report["sample"] == len(scifact_subset["docs"])  # a small gallery: every row, well within the budget
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


def test_the_budget_is_kept_per_encoder_call(l3_gallery):
    """The clock is read before every step and steps are sized from the measured rate: embedding and
    fitting end within about one step of --budget (the old check, after each 256-row chunk, took
    all 256 rows whatever the budget: about 17 s of MiniLM-L6 here, over this budget on its own)."""
    from compatret.adapt.build import AdaptSettings, fit_adapters

    budget = 15.0
    t0 = time.perf_counter()
    f = fit_adapters(l3_gallery / "l3", "minilm-l6", AdaptSettings(budget=budget), progress=False)
    wall = time.perf_counter() - t0
    assert wall <= budget + CALL_SECONDS + 1.5, wall
    assert len(f.pairs.ids) >= 20 and f.estimate is not None


def damaged_minilm_l6(path: Path, sigma: float = 0.5) -> Path:
    """all-MiniLM-L6-v2 with Gaussian noise (sigma x each tensor's spread) on every weight, saved as
    a plain sentence-transformers folder: a new model that would serve worse than staying."""
    import torch
    from sentence_transformers import SentenceTransformer

    from compatret.encoders.registry import _minilm_l6_dir

    model = SentenceTransformer(str(_minilm_l6_dir()), device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(sigma * p.std() * torch.randn(p.shape, generator=gen))
    model.save(str(path))
    return path


def test_an_adapter_estimated_worse_than_staying_is_refused(l3_gallery, tmp_path):
    """A model that would hurt (a damaged MiniLM-L6, imported from its sentence-transformers
    folder) is refused before anything is written; --force writes it and says it is worse."""
    plain = damaged_minilm_l6(tmp_path / "st")
    hint = in_process("index", "upgrade", str(l3_gallery / "l3"), "--model", str(plain))
    assert hint.returncode == 2 and "compatret model import" in hint.stderr
    bad_id = in_process("model", "import", str(plain), "--out", str(tmp_path / "x"), "--id", "../up")
    assert bad_id.returncode == 2 and "--id" in bad_id.stderr and not (tmp_path / "x").exists()
    imported = in_process("model", "import", str(plain), "--out", str(tmp_path / "damaged"), "--id", "damaged-l6", "--json")
    assert imported.returncode == 0, imported.stderr
    assert json.loads(imported.stdout)["dim"] == 384
    again = in_process("model", "import", str(tmp_path / "damaged"), "--out", str(tmp_path / "x"))
    assert again.returncode == 2 and "compatret model folder already" in again.stderr and not (tmp_path / "x").exists()

    args = ["adapt", str(l3_gallery / "l3"), "--model", str(tmp_path / "damaged"), "--sample", "120"]
    refused = in_process(*args, "--out", str(tmp_path / "ad"), "--json")  # --json: no progress lines beside the error
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "staying on 'minilm-l3' is estimated better" in refused.stderr and "nothing written" in refused.stderr
    assert not (tmp_path / "ad").exists() and not list(tmp_path.glob(".ad.tmp-*"))
    forced = in_process(*args, "--out", str(tmp_path / "ad"), "--force", "--kind", "procrustes", "--json")
    assert forced.returncode == 0, forced.stderr
    report = json.loads(forced.stdout)
    assert report["forced"] and report["estimate"]["high"] < 0
    up = in_process("index", "upgrade", str(tmp_path / "g"), "--model", str(tmp_path / "ad"))  # no gallery there: one line
    assert up.returncode == 2
    shutil.copytree(l3_gallery / "l3", tmp_path / "g")
    up = in_process("index", "upgrade", str(tmp_path / "g"), "--model", str(tmp_path / "ad"))
    assert up.returncode == 0 and "estimated worse, written with --force" in up.stdout and "mapped into its space" in up.stdout


def test_a_model_folder_appears_whole_or_not_at_all(tmp_path):
    from compatret.encoders.folders import built_beside

    out = tmp_path / "m"
    with pytest.raises(RuntimeError):
        with built_beside(out) as tmp:
            tmp.mkdir()
            (tmp / "half.npz").write_bytes(b"x")
            raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary twin
    out.mkdir()  # an empty target (what `--out` may name) is replaced
    with built_beside(out) as tmp:
        tmp.mkdir()
        (tmp / "whole.npz").write_bytes(b"x")
    assert [p.name for p in tmp_path.iterdir()] == ["m"] and (out / "whole.npz").exists()


def test_backfill_order_auto_puts_crowded_rows_first_behind_a_map(tmp_path):
    """`index backfill`'s default order: random for rows read as they are, crowded old vectors first
    once the serving model reads them through a fitted map (a random order dipped there)."""
    from compatret import Compat, ModelVersion
    from compatret.adapt.fit import fit_affine
    from compatret.engine.backfill import plan_order

    rng = np.random.default_rng(0)
    x = normalize(rng.normal(size=(300, 8)))
    x[:60] = normalize(x[0] + 0.05 * rng.normal(size=(60, 8)))  # a crowded corner
    s = Service.create(tmp_path / "g", dim=8, version_id="v1")
    ids = [str(i) for i in range(300)]
    s.add_vectors(x, ids=ids)
    assert plan_order(s, ids, "auto") == plan_order(s, ids, "random")
    v1 = s.meta.serving
    v2 = ModelVersion("v2", 8, "vector", parent=v1, compat=Compat.transform("transforms/v2.npz"), method="adapter")
    (tmp_path / "v2" / "transforms").mkdir(parents=True)
    fit_affine(x, x @ rng.normal(size=(8, 8)).astype(np.float32), 1e-3).save(tmp_path / "v2" / "transforms" / "v2.npz")
    v2.save(tmp_path / "v2")
    s.upgrade(str(tmp_path / "v2"))
    auto = plan_order(s, ids, "auto")
    assert auto == plan_order(s, ids, "uncertainty") != plan_order(s, ids, "random")
    assert len(set(auto[:60]) & set(ids[:60])) >= 55  # the crowded corner goes first


def test_a_sharded_gallery_is_adapted_on_its_largest_shard_and_upgraded_as_one(scifact_subset, tmp_path):
    from compatret.engine.sharded import ShardedService

    g = tmp_path / "s"
    sharded = ShardedService.create(g, 2, model="minilm-l3")
    sharded.add_items(scifact_subset["docs"], progress=False)
    largest = max(sharded.shards, key=lambda s: s.count())
    done = in_process("adapt", str(g), "--model", "minilm-l6", "--out", str(tmp_path / "ad"), "--sample", "100", "--kind", "affine",
                      "--force", "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert json.loads((tmp_path / "ad" / "adapter.json").read_text())["gallery"] == str(largest.gallery.path.resolve())
    up = in_process("index", "upgrade", str(g), "--model", str(tmp_path / "ad"), "--json")
    assert up.returncode == 0, up.stderr
    after = ShardedService.open(g)
    assert {s.meta.serving.id for s in after.shards} == {report["model_id"]} and after.meta.serving.compat.kind == "transform"
    assert all((s.gallery.path / "transforms").is_dir() for s in after.shards)  # each shard holds its copy of the map
    doc = scifact_subset["docs"][3]
    assert after.query(texts=[f"{doc['title']} {doc['text']}"], k=5)[0].ids[0] == doc["id"]
