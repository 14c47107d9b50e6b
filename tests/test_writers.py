"""The table is the only truth: several writers (handles, threads, processes) on one real gallery."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from compatret import CompatretError
from compatret.engine.backfill import backfill
from compatret.store.pending import pending_counts, pending_rows
from compatret.store.gallery import Gallery
from compatret.store.history import grouped, history, rollback
from compatret.store.sealed import DIGEST_FILE, digest
from compatret.search.fragments import CACHE_DIR
from compatret.engine.overview import info
from compatret.engine.service import Service
from compatret.search.verify import verify
from compatret.store.writer_lock import retry_commit, writer_lock
from compatret.core.lineage import VERSION_FILE
from compatret.core.transforms import normalize

ENV = {**os.environ, "LANCEDB_LOG": "error"}


def vectors(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    return normalize(np.random.default_rng(seed).normal(size=(n, d)))


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compatret", *args], env=env or ENV, capture_output=True, text=True, timeout=timeout)


def test_two_handles_delete_and_add_leave_no_ghost(tmp_path):
    """Failure 1: one handle deletes, another adds; a fresh reader served the deleted row."""
    x10, x3 = vectors(10), vectors(3, seed=1)
    p = tmp_path / "g"
    s = Service.create(p, dim=8, version_id="v1")
    s.add_vectors(x10, ids=[f"a{i}" for i in range(10)])
    w1, w2 = Service.open(p), Service.open(p)
    w1.index, w2.index  # both hold a view before either writes
    w1.delete(["a0", "a1"])
    w2.add_vectors(x3, ids=["b0", "b1", "b2"])
    fresh = Service.open(p)
    assert fresh.index.size == fresh.gallery.count() == 11
    hits = fresh.query(vectors=x10[:2], k=11)
    assert all("a0" not in r.ids and "a1" not in r.ids for r in hits)
    assert w1.query(vectors=x3[:1], k=1)[0].ids == ["b0"]  # the other handle sees the add too
    assert verify(fresh.gallery).ok


def test_default_ids_stay_unique_after_a_delete(tmp_path):
    """Failure 2: default ids were str(size + i), so a delete made the next add collide."""
    s = Service.create(tmp_path / "g", dim=8, version_id="v1")
    s.add_vectors(vectors(10))
    first = s.query(vectors=vectors(10)[3:4], k=1)[0].ids[0]
    s.delete([first])
    s.add_vectors(vectors(1, seed=5))
    s.add_vectors(vectors(2, seed=6))
    ids = s.gallery.scan(["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 12 and first not in ids


@pytest.mark.processes
def test_racing_cli_writers_all_succeed(tmp_path):
    """Failure 3: writers racing printed Lance's commit-conflict traceback; now they take turns."""
    g = tmp_path / "g"
    assert cli("index", "create", str(g), "--dim", "8", "--version-id", "v1").returncode == 0
    np.save(tmp_path / "base.npy", vectors(40))
    np.save(tmp_path / "base_ids.npy", np.array([f"base{i}" for i in range(40)]))
    assert cli("index", "add", str(g), "--vectors", str(tmp_path / "base.npy"), "--ids", str(tmp_path / "base_ids.npy")).returncode == 0
    procs = []
    for w in range(3):
        np.save(tmp_path / f"x{w}.npy", vectors(20, seed=10 + w))
        np.save(tmp_path / f"ids{w}.npy", np.array([f"w{w}-{i}" for i in range(20)]))
        procs.append(subprocess.Popen([sys.executable, "-m", "compatret", "index", "add", str(g), "--vectors", str(tmp_path / f"x{w}.npy"),
                                       "--ids", str(tmp_path / f"ids{w}.npy"), "--batch-size", "5"], env=ENV,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deletes = [subprocess.Popen([sys.executable, "-m", "compatret", "index", "delete", str(g), "--id", f"base{i}"], env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    for p in procs + deletes:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0 and "Traceback" not in err, err[-2000:]
    s = Service.open(g)
    assert s.gallery.count() == s.index.size == 40 - 4 + 60
    assert verify(s.gallery).ok


@pytest.mark.processes
def test_a_waiting_writer_names_the_holder_then_gives_up(tmp_path):
    s = Service.create(tmp_path / "g", dim=8, version_id="v1")
    np.save(tmp_path / "x.npy", vectors(2))
    with writer_lock(s.gallery.path, "test holder"):
        res = cli("index", "add", str(tmp_path / "g"), "--vectors", str(tmp_path / "x.npy"), env={**ENV, "COMPATRET_LOCK_TIMEOUT": "1"})
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.count("\n") == 1 and f"pid {os.getpid()} (test holder)" in res.stderr
    assert s.gallery.count() == 0
    assert cli("index", "add", str(tmp_path / "g"), "--vectors", str(tmp_path / "x.npy")).returncode == 0  # released


def test_commit_conflicts_are_retried_then_one_line(tmp_path):
    import lance
    import pyarrow as pa
    from lance.commit import CommitConflictError

    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise CommitConflictError("Retryable commit conflict for version 7: This Append transaction was preempted")
        return "committed"

    assert retry_commit(flaky, "add") == "committed" and len(calls) == 3
    # a real conflict: a rewrite read before another writer's delete of the same fragment never rebases
    table = tmp_path / "t.lance"
    lance.write_dataset(pa.table({"id": ["a", "b"]}), table)
    stale = lance.dataset(table)
    lance.dataset(table).delete("id = 'a'")
    frag = stale.get_fragments()[0].metadata
    op = lance.LanceOperation.Rewrite(groups=[lance.LanceOperation.RewriteGroup(old_fragments=[frag], new_fragments=[frag])],
                                      rewritten_indices=[])
    with pytest.raises(CompatretError, match="commit conflict with another writer after 5 tries"):
        retry_commit(lambda: lance.LanceDataset.commit(table, op, read_version=stale.version), "rewrite")
    with pytest.raises(RuntimeError, match="disk on fire"):  # anything else is not hidden
        retry_commit(lambda: (_ for _ in ()).throw(RuntimeError("disk on fire")), "add")


def test_meta_at_reads_the_asked_version(tmp_path):
    """Failure 4: meta_at(v) returned the current metadata whatever v was."""
    from compatret import ModelVersion
    from compatret.core.lineage import Compat

    v1, folders = ModelVersion("v1", 8), {}
    for v in (v1, ModelVersion("v2", 8, parent=v1, compat=Compat.identity(), method="bct")):
        folders[v.id] = tmp_path / v.id
        folders[v.id].mkdir()
        v.save(folders[v.id])
    s = Service.create(tmp_path / "g", model=str(folders["v1"]))
    before = s.gallery.version
    s.upgrade(str(folders["v2"]))
    g = Gallery.open(tmp_path / "g")
    assert g.meta_at(before).serving.id == "v1" and g.meta_at(g.version).serving.id == "v2"


@pytest.mark.processes
def test_backfill_compaction_keeps_every_version(tmp_path, digit_models, monkeypatch):
    """Failure 5: backfill's periodic optimize() deleted versions older than 7 days (rollback targets)."""
    if shutil.which("faketime") is None:
        pytest.skip("needs faketime (apt-get install faketime) to age the table's versions")
    s = Service.create(tmp_path / "g", model=digit_models["v1"])
    s.add_items(digit_models["items"][:40], progress=False)
    first = s.gallery.version
    s.upgrade(digit_models["v2"])
    versions = len(s.gallery.table.list_versions())
    env = {**ENV, "COMPATRET_COMPACT_EVERY": "2"}
    res = subprocess.run(["faketime", "-f", "+8d", sys.executable, "-m", "compatret", "index", "backfill", str(tmp_path / "g"),
                          "--batch-size", "4", "--json"], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    s = Service.open(tmp_path / "g")
    assert s.rows_by_version() == {"v2": 40}
    assert len(s.gallery.table.list_versions()) > versions + 10  # 10 batches + compactions, nothing forgotten
    every = history(s.gallery)
    assert "table maintenance" in {h["change"] for h in every}
    runs = [h for h in grouped(every) if h["change"].startswith("backfill")]  # its compactions folded into the one run
    assert [h["change"] for h in runs] == ["backfill to v2: 10 batches"] and runs[0]["to_version"] - runs[0]["version"] + 1 > 10
    rollback(s.gallery, first)
    assert Service.open(tmp_path / "g").rows_by_version() == {"v1": 40}
    last = grouped(history(Service.open(tmp_path / "g").gallery))[-1]  # the restore and its rollback event: one entry
    assert last["change"] == f"rollback to version {first}" and last["to_version"] == last["version"] + 1


@pytest.mark.processes
def test_backfill_skips_rows_it_cannot_re_embed(tmp_path, digit_models):
    """Failure 6: rows stored as bare vectors were re-embedded from nothing (or failed half-way)."""
    s = Service.create(tmp_path / "g", model=digit_models["v1"])
    s.add_items(digit_models["items"][:30], progress=False)
    bare = vectors(3, d=s.meta.dim, seed=4)
    s.add_vectors(bare, ids=["bare0", "bare1", "bare2"])
    s.upgrade(digit_models["v2"])
    assert len(pending_rows(s.gallery).ids) == 30 and pending_rows(s.gallery).unembeddable == ["bare0", "bare1", "bare2"]
    assert pending_counts(s.gallery, s.rows_by_version()) == (30, 3)  # what GET /backfill reports, counted without the ids
    backfill(s, limit=8, batch_size=8, progress=False)
    assert pending_counts(s.gallery, s.rows_by_version()) == (22, 3)
    report = backfill(s, batch_size=8, progress=False)
    assert (report.done, report.remaining, report.skipped) == (22, 0, 3)
    s = Service.open(tmp_path / "g")
    assert s.rows_by_version() == {"v1": 3, "v2": 30}
    ids, stored = s.gallery.rows_of("v1")
    np.testing.assert_allclose(stored[np.argsort(ids)], bare, atol=1e-6)  # untouched, not invented
    assert info(s)["unembeddable"] == 3
    res = cli("index", "backfill", str(tmp_path / "g"))
    assert res.returncode == 0 and "skipped 3 rows with no text or image" in res.stdout


@pytest.mark.processes
def test_verify_finds_a_damaged_cache_and_repair_rebuilds_it(tmp_path):
    s = Service.create(tmp_path / "g", dim=8, version_id="v1")
    x = vectors(30)
    s.add_vectors(x, ids=[f"r{i}" for i in range(30)])
    s.index  # writes the cache
    assert cli("index", "verify", str(tmp_path / "g")).returncode == 0
    # tamper with one cached vector: the cache now disagrees with the table
    f = next((tmp_path / "g" / CACHE_DIR).glob("frag-*/vec-0.npy"))
    tampered = np.load(f)
    tampered[3] *= -1
    np.save(f, tampered)
    seal = json.loads((f.parent / DIGEST_FILE).read_text())  # resealed: a cache wrong in itself, not damaged on disk
    seal[f.name] = [f.stat().st_size, digest(f.read_bytes())]
    (f.parent / DIGEST_FILE).write_text(json.dumps(seal))
    res = cli("index", "verify", str(tmp_path / "g"), "--json")
    assert res.returncode == 1 and "vectors differ" in res.stdout and "r3" in res.stdout
    fixed = cli("index", "verify", str(tmp_path / "g"), "--repair")
    assert fixed.returncode == 0 and "cache rebuilt" in fixed.stdout
    assert Service.open(tmp_path / "g").query(vectors=x[3:4], k=1)[0].ids == ["r3"]


def test_server_backfill_thread_reports_unexpected_errors(tmp_path, digit_models):
    """Failure 3, server side: an exception other than CompatretError left last_error null."""
    from fastapi.testclient import TestClient

    from compatret.server.app import create_app

    broken = tmp_path / "v2-broken"
    shutil.copytree(digit_models["v2"], broken)
    for w in broken.glob("*.pt"):
        w.write_bytes(b"not weights")
    record = json.loads((broken / VERSION_FILE).read_text())
    record.pop("digest")  # a record from before digests: the broken weights get past the upgrade
    (broken / VERSION_FILE).write_text(json.dumps(record))
    s = Service.create(tmp_path / "g", model=digit_models["v1"])
    s.add_items(digit_models["items"][:10], progress=False)
    s.upgrade(str(broken))
    c = TestClient(create_app(tmp_path / "g", refresh_seconds=0.0))
    assert c.post("/backfill", json={}).status_code == 202
    deadline = dt.datetime.now() + dt.timedelta(seconds=60)
    status = c.get("/backfill").json()
    while status["running"] and dt.datetime.now() < deadline:
        status = c.get("/backfill").json()
    assert status["last_error"] and status["pending"] == 10
