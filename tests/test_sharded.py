"""Sharded galleries: N shard galleries published together through the snapshot log."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compatret import Compat, CompatretError, ModelVersion
from compatret.engine.service import Service
from compatret.engine.sharded import ShardedService, open_gallery, shard_dir
from compatret.store.intent import INTENT_FILE
from compatret.store.snapshots import shard_of
from test_service import model_folder, vectors

V1 = ModelVersion("v1", 8)
V2 = ModelVersion("v2", 12, parent=V1, compat=Compat.prefix(8), method="bt2")


def folders(tmp_path) -> tuple[str, str]:
    """The model folders of v1 and v2 (records only: these galleries hold given vectors)."""
    if not (tmp_path / "v1").exists():
        model_folder(tmp_path, V1), model_folder(tmp_path, V2)
    return str(tmp_path / "v1"), str(tmp_path / "v2")


def twin_galleries(tmp_path, shards: int = 3) -> tuple[Service, ShardedService, np.ndarray]:
    """The same rows, v1 then v2 after an upgrade, in one gallery and in a sharded one."""
    base = vectors(300, 12, seed=5)
    v1, v2 = folders(tmp_path)
    made = []
    for name, create in (("one", lambda p: Service.create(p, model=v1)), ("sharded", lambda p: ShardedService.create(p, shards, model=v1))):
        g = create(tmp_path / name)
        g.add_vectors(base[:200, :8], ids=[f"a{i}" for i in range(200)])
        g.upgrade(v2)
        g.add_vectors(base[200:], ids=[f"b{i}" for i in range(100)], model="v2")
        made.append(g)
    return made[0], made[1], base


def test_shard_of_is_stable_and_spreads_rows():
    assert [shard_of(f"id{i}", 4) for i in range(6)] == [shard_of(f"id{i}", 4) for i in range(6)]
    counts = np.bincount([shard_of(f"row-{i}", 4) for i in range(4000)], minlength=4)
    assert counts.min() > 900  # about 1000 each
    assert shard_of("abc", 7) == int.from_bytes(__import__("hashlib").blake2b(b"abc", digest_size=8).digest(), "big") % 7


def test_a_sharded_gallery_answers_exactly_as_one_gallery(tmp_path):
    one, sharded, base = twin_galleries(tmp_path)
    assert sharded.rows_by_version() == one.rows_by_version() == {"v1": 200, "v2": 100}
    assert all(s.gallery.count() > 0 for s in sharded.shards)
    queries = vectors(20, 12, seed=9)
    for model, q in ((None, queries), ("v1", queries[:, :8])):
        want, got = one.query(vectors=q, k=15, model=model), sharded.query(vectors=q, k=15, model=model)
        for w, g in zip(want, got):
            assert g.ids == w.ids
            np.testing.assert_allclose(g.scores, w.scores, atol=1e-5)
            assert g.snapshot == sharded.snapshot.snapshot
    reopened = open_gallery(tmp_path / "sharded")
    assert isinstance(reopened, ShardedService) and reopened.query(vectors=queries[:1], k=5)[0].ids == one.query(vectors=queries[:1], k=5)[0].ids


def test_queries_answer_from_the_published_snapshot_only(tmp_path):
    _, sharded, base = twin_galleries(tmp_path)
    before = sharded.snapshot
    target = next(i for i in range(100) if shard_of(f"b{i}", 3) == 1)
    q = base[200 + target : 201 + target]
    assert sharded.query(vectors=q, k=1)[0].ids == [f"b{target}"]
    sharded.shards[1].delete([f"b{target}"])  # committed on a shard, never published (a crash before the snapshot)
    assert sharded.query(vectors=q, k=1)[0].ids == [f"b{target}"] and sharded.snapshot == before
    with pytest.raises(CompatretError, match="shard 1 changed outside this sharded gallery"):
        sharded.delete(["a0"])
    sharded.rollback(before.snapshot)
    assert sharded.delete([f"b{target}"]) == 1
    assert sharded.query(vectors=q, k=1)[0].ids != [f"b{target}"]  # an acknowledged delete is never served


def test_an_interrupted_write_is_finished_by_running_it_again(tmp_path):
    _, sharded, base = twin_galleries(tmp_path)
    before = sharded.snapshot
    ids = [f"c{i}" for i in range(30)]
    more = vectors(30, 12, seed=11)
    # the crash: the intent written and one shard committed, then the process died
    (tmp_path / "sharded" / INTENT_FILE).write_text(json.dumps({"command": "index add", "key": _add_key(ids), "from": before.snapshot}))
    first = [j for j, i in enumerate(ids) if shard_of(i, 3) == 0]
    sharded.shards[0].add_vectors(more[first], ids=[ids[j] for j in first], model="v2")
    assert sharded.shards[0].gallery.rows_by_version()["v2"] > sharded.shards[0].view_at(before.versions[0]).counts()["v2"]
    assert sharded.rows_by_version()["v2"] == 100 and sharded.snapshot == before  # committed on a shard, not published
    with pytest.raises(CompatretError, match="an interrupted `index add` left shards ahead of snapshot"):
        sharded.delete(["a0"])
    assert sharded.add_vectors(more, ids=ids, model="v2") == 30 - len(first)
    assert sharded.snapshot.snapshot == before.snapshot + 1 and not (tmp_path / "sharded" / INTENT_FILE).exists()
    assert sharded.query(vectors=more[:1], k=1)[0].ids == ["c0"]


def _add_key(ids):
    from compatret.engine.sharded import _key

    return _key(ids, "v2")


def test_upgrade_and_rollback_move_every_shard_at_once(tmp_path):
    _, sharded, base = twin_galleries(tmp_path)
    snaps = sharded.history()
    assert [s["event"] for s in snaps] == ["create", "add", "upgrade", "add"] and snaps[2]["serving"] == "v2"
    sharded.rollback(1)
    assert sharded.meta.serving.id == "v1" and sharded.rows_by_version() == {"v1": 200}
    assert {s.meta.serving.id for s in sharded.shards} == {"v1"}
    assert sharded.history()[-1]["event"] == "rollback"


def test_bad_input_changes_nothing(tmp_path):
    with pytest.raises(CompatretError, match="--shards must be at least 1"):
        ShardedService.create(tmp_path / "zero", 0, model=folders(tmp_path)[0])
    assert not (tmp_path / "zero").exists()
    _, sharded, _ = twin_galleries(tmp_path)
    with pytest.raises(CompatretError, match="no snapshot 99"):
        sharded.rollback(99)
    ShardedService.create(tmp_path / "other", 3, model=folders(tmp_path)[0])
    shard_dir(tmp_path / "sharded", 2).rename(tmp_path / "kept")
    with pytest.raises(CompatretError, match="shard 2 of .* is missing"):
        ShardedService.open(tmp_path / "sharded")
    shard_dir(tmp_path / "other", 2).rename(shard_dir(tmp_path / "sharded", 2))
    with pytest.raises(CompatretError, match="is not shard 2 of this gallery"):
        ShardedService.open(tmp_path / "sharded")


def cli(*args):
    from click.testing import CliRunner

    from compatret.cli.main import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_every_index_command_on_a_sharded_gallery(tmp_path):
    v1, v2 = folders(tmp_path)
    g = tmp_path / "g"
    bad = cli("index", "create", tmp_path / "zero", "--model", v1, "--shards", "0")
    assert bad.exit_code == 2 and bad.stderr.strip() == "error: --shards must be at least 1, got 0" and not (tmp_path / "zero").exists()
    assert cli("index", "create", g, "--model", v1, "--shards", "4", "--json").exit_code == 0
    base = vectors(120, 12, seed=2)
    np.save(tmp_path / "x.npy", base[:, :8])
    np.save(tmp_path / "ids.npy", np.array([f"r{i}" for i in range(120)]))
    added = cli("index", "add", g, "--vectors", tmp_path / "x.npy", "--ids", tmp_path / "ids.npy", "--json")
    assert added.exit_code == 0 and json.loads(added.stdout)["added"] == 120
    info = json.loads(cli("index", "info", g, "--json").stdout)
    assert info["rows"] == 120 and info["shards"] == 4 and sum(info["shard_rows"]) == 120 and min(info["shard_rows"]) > 10
    np.save(tmp_path / "q.npy", base[7:8, :8])
    hit = json.loads(cli("query", g, "--vectors", tmp_path / "q.npy", "-k", "3", "--json").stdout)
    assert hit["ids"][0] == "r7" and hit["snapshot"] == 1
    up = cli("index", "upgrade", g, "--model", v2, "--json")
    assert up.exit_code == 0 and json.loads(up.stdout)["serving"] == "v2"
    assert cli("index", "delete", g, "--id", "r7", "--json").exit_code == 0
    gone = cli("index", "delete", g, "--id", "r7")
    assert gone.exit_code == 2 and "1 ids not in the gallery" in gone.stderr
    hit = json.loads(cli("query", g, "--vectors", tmp_path / "q.npy", "--model", "v1", "-k", "3", "--json").stdout)
    assert "r7" not in hit["ids"] and hit["snapshot"] == 3
    history = json.loads(cli("index", "history", g, "--json").stdout)
    assert [h["event"] for h in history] == ["create", "add", "upgrade", "delete"]
    assert cli("index", "rollback", g, "--to", "1").exit_code == 0
    info = json.loads(cli("index", "info", g, "--json").stdout)
    assert info["serving_model"] == "v1" and info["rows"] == 120
    assert json.loads(cli("query", g, "--vectors", tmp_path / "q.npy", "-k", "1", "--json").stdout)["ids"] == ["r7"]
    verified = cli("index", "verify", g, "--json")
    assert verified.exit_code == 0 and json.loads(verified.stdout)["ok"]
    refused = cli("index", "rollback", g, "--to", "42")
    assert refused.exit_code == 2 and "no snapshot 42" in refused.stderr
    pruned = cli("index", "prune", g, "--older-than-days", "0", "--json")
    assert pruned.exit_code == 0
    refused = cli("index", "rollback", g, "--to", "2")
    assert refused.exit_code == 2 and "which was pruned: nothing changed" in refused.stderr
    assert json.loads(cli("index", "info", g, "--json").stdout)["rows"] == 120


def _rows_at(sharded: ShardedService, snap) -> tuple[list[str], np.ndarray]:
    """Every row a snapshot publishes, read straight from each shard's table at its version."""
    ids, vecs = [], []
    for s, v in zip(sharded.shards, snap.versions):
        ds = s.gallery.dataset(v)
        wide = "vector_12" in ds.schema.names
        for r in ds.to_table(columns=["id", "model_version", "vector", *(["vector_12"] if wide else [])]).to_pylist():
            ids.append(r["id"])
            vecs.append(r["vector_12"][:8] if r["model_version"] == "v2" else r["vector"])  # v1 reads v2 rows' first 8 dims
    return ids, np.asarray(vecs, np.float32)


def test_upgrades_and_rollbacks_under_continuous_queries_answer_from_one_snapshot(tmp_path):
    import threading

    from compatret.core.transforms import normalize

    _, sharded, base = twin_galleries(tmp_path)
    reader = ShardedService.open(tmp_path / "sharded")
    q = normalize(vectors(1, 8, seed=21))
    seen: list = []
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set():
            seen.append(reader.query(vectors=q, model="v1", k=10)[0])

    t = threading.Thread(target=ask)
    t.start()
    v1, v2 = folders(tmp_path)
    for _ in range(3):
        sharded.rollback(1)  # v1 serving, the a-rows only
        sharded.rollback(3)  # v2 serving, every row
        sharded.delete([f"b{len(seen) % 100}"])
        assert reader.query(vectors=q, model="v1", k=1)[0].snapshot == sharded.snapshot.snapshot  # acknowledged: seen by every reader
    stop.set()
    t.join()
    snaps = {s.snapshot: s for s in sharded.log.all()}
    assert len({r.snapshot for r in seen}) >= 3, "the queries did not overlap the writes"
    for r in seen:  # each answer is brute force over the rows of the one snapshot it names
        ids, vecs = _rows_at(sharded, snaps[r.snapshot])
        scores = normalize(vecs[:, :8]) @ q[0]
        best = np.argsort(-scores)[:10]
        assert r.ids == [ids[i] for i in best]
        np.testing.assert_allclose(r.scores, scores[best], atol=1e-5)


@pytest.mark.processes
def test_a_backfill_killed_between_shards_serves_the_old_snapshot_and_its_rerun_finishes(tmp_path, digit_models):
    import os
    import signal
    import subprocess
    import sys
    import time

    g = tmp_path / "g"
    sharded = ShardedService.create(g, 3, model=digit_models["v1"])
    items = digit_models["items"][:240]
    sharded.add_items(items, progress=False)
    sharded.upgrade(digit_models["v2"])
    published = sharded.snapshot
    cmd = [sys.executable, "-m", "compatret", "index", "backfill", str(g), "--batch-size", "2", "--json"]
    proc = subprocess.Popen(cmd, env={**os.environ, "LANCEDB_LOG": "error"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:  # until the first shard has committed a batch
        if sharded.shards[0].gallery.latest_version() > published.versions[0]:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    reader = ShardedService.open(g)
    assert (g / INTENT_FILE).exists() and reader.snapshot.snapshot <= published.snapshot + 1
    answer = reader.query(images=[items[5]["image"]], k=3)[0]
    assert len(answer.ids) == 3 and answer.snapshot == reader.snapshot.snapshot
    refused = cli("index", "delete", g, "--id", items[0]["id"])
    assert refused.exit_code == 2 and "an interrupted `index backfill` left shards ahead of snapshot" in refused.stderr
    done = subprocess.run(cmd, env={**os.environ, "LANCEDB_LOG": "error"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not (g / INTENT_FILE).exists() and ShardedService.open(g).rows_by_version() == {"v2": 240}
    answer = ShardedService.open(g).query(images=[items[5]["image"]], k=1)[0]
    assert answer.ids == [items[5]["id"]] and answer.scores[0] == pytest.approx(1.0, abs=1e-5)  # its own v2 vector now
    assert [h["event"] for h in ShardedService.open(g).history()][-3:] == ["backfill"] * 3


def test_serve_on_ray_needs_a_sharded_gallery(tmp_path):
    v1, _ = folders(tmp_path)
    Service.create(tmp_path / "one", model=v1)
    res = cli("serve", tmp_path / "one", "--engine", "ray")
    assert res.exit_code == 2 and res.stderr.strip() == (
        f"error: {tmp_path / 'one'} is not a sharded gallery: --engine ray serves galleries made with `index create --shards N`"
    )
    ShardedService.create(tmp_path / "g", 2, model=v1)
    res = cli("serve", tmp_path / "g", "--engine", "ray", "--replicas", "0")
    assert res.exit_code == 2 and "--replicas must be >= 1" in res.stderr


def test_an_upgrade_cut_between_shards_serves_the_old_model_until_its_rerun(tmp_path):
    from compatret.engine.sharded import _key

    v1, v2 = folders(tmp_path)
    g = tmp_path / "g"
    sharded = ShardedService.create(g, 3, model=v1)
    sharded.add_vectors(vectors(60, 8, seed=3), ids=[f"r{i}" for i in range(60)])
    before = sharded.snapshot
    # the crash: the intent written and shard 0 upgraded, then the process died before shards 1 and 2
    (g / INTENT_FILE).write_text(json.dumps({"command": "index upgrade", "key": _key(v2), "from": before.snapshot}))
    sharded.shards[0].upgrade(v2)
    reader = ShardedService.open(g)
    assert reader.meta.serving.id == "v1" and reader.query(vectors=vectors(1, 8, seed=4), k=3)[0].snapshot == before.snapshot
    refused = cli("index", "upgrade", g, "--model", v1)
    assert refused.exit_code == 2 and "an interrupted `index upgrade` left shards ahead of snapshot" in refused.stderr
    done = cli("index", "upgrade", g, "--model", v2, "--json")
    assert done.exit_code == 0, done.stderr
    after = ShardedService.open(g)
    assert json.loads(done.stdout)["serving"] == "v2" and {s.meta.serving.id for s in after.shards} == {"v2"}
    assert reader.snapshot.snapshot == before.snapshot + 1 and reader.meta.serving.id == "v2" and not (g / INTENT_FILE).exists()
    upgrades = [e for e in after.shards[0].meta.history if e.get("event") == "upgrade"]
    assert len(upgrades) == 1  # the shard done before the crash was not upgraded twice


def test_a_refused_write_leaves_no_intent_and_no_row_changed(tmp_path):
    _, sharded, base = twin_galleries(tmp_path)
    with pytest.raises(CompatretError, match="1 ids not in the gallery"):
        sharded.delete(["nope"])
    assert not (tmp_path / "sharded" / INTENT_FILE).exists()
    before, rows = sharded.snapshot, sharded.rows_by_version()
    # an add whose refusal is found on a later shard only: an id stored there with another vector
    late = next(i for i in range(100) if shard_of(f"b{i}", 3) == 2)
    ids = [f"new{i}" for i in range(12)] + [f"b{late}"]
    fresh = vectors(13, 12, seed=19)
    assert any(shard_of(i, 3) < 2 for i in ids[:12])  # some rows land on shards written before the refusal
    with pytest.raises(CompatretError, match="already"):
        sharded.add_vectors(fresh, ids=ids, model="v2")
    assert not (tmp_path / "sharded" / INTENT_FILE).exists() and sharded.rows_by_version() == rows
    assert sharded.snapshot.event == "undone" and sharded.existing(ids[:12]) == []
    assert sharded.add_vectors(fresh[:12], ids=ids[:12], model="v2") == 12  # nothing in the way of the next write
    assert sharded.snapshot.snapshot == before.snapshot + 2


def test_vectors_without_ids_are_named_so_a_rerun_finishes_the_add(tmp_path):
    v1, _ = folders(tmp_path)
    sharded = ShardedService.create(tmp_path / "g", 2, model=v1)
    x = vectors(20, 8, seed=8)
    assert sharded.add_vectors(x) == 20
    assert sharded.add_vectors(x) == 0 and sharded.count() == 20  # the same vectors: the same names, nothing new
    assert sharded.add_vectors(vectors(5, 8, seed=9)) == 5


def test_a_crash_after_the_snapshot_but_before_the_intent_went_is_seen_as_finished(tmp_path):
    _, sharded, _ = twin_galleries(tmp_path)
    left = {"command": "index delete", "key": sharded.snapshot.details["intent"], "from": sharded.snapshot.snapshot - 1}
    (tmp_path / "sharded" / INTENT_FILE).write_text(json.dumps(left))  # its snapshot is published: nothing to finish
    assert sharded.delete(["a1"]) == 1
    (tmp_path / "sharded" / INTENT_FILE).write_text("{not json")
    with pytest.raises(CompatretError, match="cannot be read .*index rollback"):
        sharded.delete(["a2"])


def test_a_failed_create_leaves_nothing_behind(tmp_path):
    with pytest.raises(CompatretError):
        ShardedService.create(tmp_path / "g", 3, model=str(tmp_path / "no-such-model"))
    assert not (tmp_path / "g").exists()
    v1, _ = folders(tmp_path)
    assert ShardedService.create(tmp_path / "g", 3, model=v1).snapshot.snapshot == 0


def test_prune_publishes_its_compaction_and_keeps_the_published_versions(tmp_path):
    import datetime as dt

    v1, _ = folders(tmp_path)
    sharded = ShardedService.create(tmp_path / "g", 2, model=v1)
    x = vectors(60, 8, seed=12)
    for n in range(3):
        sharded.add_vectors(x[20 * n : 20 * (n + 1)], ids=[f"r{i}" for i in range(20 * n, 20 * (n + 1))])
    out = sharded.prune(dt.timedelta(0))
    assert out["versions_after"] < out["versions_before"] and sharded.snapshot.event == "prune"
    reader = ShardedService.open(tmp_path / "g")
    assert reader.query(vectors=x[:1], k=1)[0].ids == ["r0"] and reader.count() == 60
    assert sharded.delete(["r5"]) == 1  # writes go on
    with pytest.raises(CompatretError, match="which was pruned: nothing changed"):
        sharded.rollback(1)


def test_the_http_api_on_a_sharded_gallery_reads_its_snapshots(tmp_path):
    from fastapi.testclient import TestClient

    from compatret.server.app import create_app

    _, sharded, base = twin_galleries(tmp_path)
    c = TestClient(create_app(tmp_path / "sharded", refresh_seconds=0.0, fingerprint_minutes=0))
    seen = c.get("/gallery").json()
    assert seen["rows"] == 300 and seen["rows_by_version"] == {"v1": 200, "v2": 100} and seen["table_version"] == 3
    assert seen["lineage"][-1]["id"] == "v2" and seen["serving"] == "v2"
    assert c.get("/health").json()["table_version"] == 3
    hit = c.post("/query", json={"vectors": [base[250].tolist()], "k": 1}).json()["results"][0]
    assert hit["ids"] == ["b50"] and hit["snapshot"] == 3
    assert c.post("/items/delete", json={"ids": ["b50"]}).json() == {"deleted": 1}
    assert c.post("/query", json={"vectors": [base[250].tolist()], "k": 1}).json()["results"][0]["ids"] != ["b50"]
    history = c.get("/history").json()
    assert [h["change"] for h in history][:2] == ["delete", "add"] and history[0]["version"] == 4 and history[0]["rows"] == 299
    assert c.post("/rollback", json={"version": 3}).json()["table_version"] == 5
    assert c.get("/backfill").json()["pending"] == 0  # bare vectors: nothing to re-embed
    assert c.get("/health").json()["rows"] == 300
