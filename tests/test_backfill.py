"""Progressive backfill on real galleries: resume after stop and kill -9, rollback, concurrent queries."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from compatret import CompatretError
from compatret.encoders import load_encoder
from compatret.engine.backfill import backfill, plan_order
from compatret.store.pending import pending_rows
from compatret.store.gallery import Gallery
from compatret.store.history import grouped, history, rollback
from compatret.engine.service import Service


def upgraded_gallery(tmp_path, digit_models, n: int = 200) -> Service:
    s = Service.create(tmp_path / "g", model=digit_models["v1"])
    s.add_items(digit_models["items"][:n], progress=False)
    s.upgrade(digit_models["v2"])
    return s


def snapshot(path) -> dict[str, tuple[str, np.ndarray]]:
    """id -> (model version, vector) of every row, read back from the table."""
    return Gallery.open(path).vectors_by_id()


def test_backfill_in_steps_equals_direct_encoding(tmp_path, digit_models):
    s = upgraded_gallery(tmp_path, digit_models)
    first = backfill(s, limit=50, batch_size=16, progress=False)
    assert (first.done, first.remaining) == (50, 150)
    assert Service.open(tmp_path / "g").rows_by_version() == {"v1": 150, "v2": 50}
    half = backfill(Service.open(tmp_path / "g"), fraction=0.5, progress=False)
    assert half.done == 50
    rest = backfill(Service.open(tmp_path / "g"), order="uncertainty", progress=False)
    assert rest.done == 100 and rest.remaining == 0
    assert backfill(Service.open(tmp_path / "g"), progress=False).done == 0  # nothing left: a no-op
    rows = snapshot(tmp_path / "g")
    items = digit_models["items"][:200]
    direct = load_encoder(digit_models["v2"]).encode_items([it["image"] for it in items])
    assert set(rows) == {it["id"] for it in items}
    for it, vec in zip(items, direct):
        version, stored = rows[it["id"]]
        assert version == "v2"
        np.testing.assert_allclose(stored, vec, atol=1e-5)


def test_random_order_shuffles_blocks_of_table_rows(tmp_path, digit_models):
    """A backfill batch is a run of consecutive table rows (one fragment, so one commit touches
    one fragment), and the batches are shuffled, the same way on every run."""
    s = upgraded_gallery(tmp_path, digit_models)
    ids = pending_rows(s.gallery).ids
    assert ids == [it["id"] for it in digit_models["items"][:200]]  # table order
    queue = plan_order(s, ids, "random", block=16)
    assert sorted(queue) == sorted(ids) and queue == plan_order(s, ids, "random", block=16)
    starts, pos = [], 0
    while pos < len(queue):
        first = ids.index(queue[pos])
        block = ids[first : first + 16]
        assert first % 16 == 0 and queue[pos : pos + len(block)] == block
        starts.append(first)
        pos += len(block)
    assert starts != sorted(starts)
    with s.gallery.writing("test"):
        before = s.gallery.version
        assert s.gallery.update_vectors([], np.zeros((0, 8), np.float32), s.meta.serving) == 0 and s.gallery.version == before


def test_queries_merge_old_and_new_rows(tmp_path, digit_models):
    s = upgraded_gallery(tmp_path, digit_models, n=120)
    backfill(s, limit=60, progress=False)
    s = Service.open(tmp_path / "g")
    assert s.rows_by_version() == {"v1": 60, "v2": 60}
    res = s.query(images=[digit_models["items"][0]["image"]], k=120)[0]
    assert len(res.ids) == 120 == len(set(res.ids))
    assert res.scores == sorted(res.scores, reverse=True)
    assert res.ids[0] == "d0"


def test_rollback_restores_serving_model_and_vectors(tmp_path, digit_models):
    s = Service.create(tmp_path / "g", model=digit_models["v1"])
    s.add_items(digit_models["items"][:64], progress=False)
    before = snapshot(tmp_path / "g")
    point = s.gallery.version
    s.upgrade(digit_models["v2"])
    backfill(s, progress=False, batch_size=16)
    assert Service.open(tmp_path / "g").rows_by_version() == {"v2": 64}
    backfilled = Service.open(tmp_path / "g").gallery.version
    rollback(Service.open(tmp_path / "g").gallery, point)
    after = Service.open(tmp_path / "g")
    assert after.meta.serving.id == "v1" and after.rows_by_version() == {"v1": 64}
    rows = snapshot(tmp_path / "g")
    for i, (v, vec) in before.items():
        assert rows[i][0] == v and np.allclose(rows[i][1], vec)
    changes = [h["change"] for h in history(after.gallery)]
    assert "upgrade from v1 to v2" in changes and changes[-2:] == ["earlier version restored", f"rollback to version {point}"]
    batches = changes.count("vectors rewritten")
    assert batches == 4  # 64 rows in batches of 16
    summary = [h for h in grouped(history(after.gallery)) if h["change"].startswith("backfill")]
    assert len(summary) == 1 and summary[0]["batches"] == batches and summary[0]["change"] == f"backfill to v2: {batches} batches"
    with pytest.raises(CompatretError, match="no version"):
        rollback(after.gallery, 10_000)
    rollback(after.gallery, backfilled)  # undo the rollback: the restored state has more models and events than the one before it
    undone = Service.open(tmp_path / "g")
    assert undone.rows_by_version() == {"v2": 64} and undone.meta.serving.id == "v2"
    assert [h["change"] for h in grouped(history(undone.gallery))][-2:] == [f"rollback to version {point}", f"rollback to version {backfilled}"]


@pytest.mark.parametrize("changes, expected", [
    (["vectors rewritten", "table maintenance", "index built", "vectors rewritten"], ["backfill to A: 2 batches"]),
    (["vectors rewritten", "vectors rewritten", "table maintenance"], ["backfill to A: 2 batches", "table maintenance"]),
    (["vectors rewritten", "table maintenance", "B:vectors rewritten"], ["backfill to A: 1 batch", "table maintenance", "backfill to B: 1 batch"]),
    (["earlier version restored", "rollback to version 3"], ["rollback to version 3"]),
    (["earlier version restored", "rows +5"], ["earlier version restored", "rows +5"]),
    (["table maintenance", "vectors rewritten", "upgrade from A", "table maintenance"],
     ["table maintenance", "backfill to A: 1 batch", "upgrade from A", "table maintenance"]),
])
def test_grouped_folds_a_runs_compactions_and_a_rollbacks_restore(changes, expected):
    """A backfill's compactions between its batches belong to it, trailing ones and another
    model's batches do not; a restore merges only with its own rollback event; nothing is lost."""
    entries = [{"version": i + 1, "time": f"t{i}", "rows": 10 + i, "serving": c.split(":")[0] if ":" in c else "A",
                "change": c.split(":")[-1]} for i, c in enumerate(changes)]
    out = grouped(entries)
    assert [e["change"] for e in out] == expected
    for run in (e for e in out if e.get("batches")):  # a run says when it ended and the rows then
        last = entries[run["to_version"] - 1]
        assert (run["time"], run["rows"]) == (last["time"], last["rows"])
    covered = [v for e in out for v in range(e["version"], e.get("to_version", e["version"]) + 1)]
    assert covered == [e["version"] for e in entries]  # every version once, in order


def test_history_cache_follows_the_table(tmp_path, digit_models, monkeypatch):
    """History read through its cache equals history worked out afresh: as versions are added,
    in another time zone, with a torn line in the cache, after a prune that a concurrent reader's
    cache outlived, and after the gallery is made anew at the same path (same version numbers,
    other commits); a second read appends nothing (the cache is used)."""
    import datetime as dt
    import json
    import shutil

    from compatret.store.history import HistoryCache, prune

    cache = HistoryCache(tmp_path / "g").file

    def fresh() -> list[dict]:
        kept = cache.read_bytes() if cache.exists() else None
        cache.unlink(missing_ok=True)
        out = history(Service.open(tmp_path / "g").gallery)
        if kept is not None:
            cache.write_bytes(kept)
        return out

    s = upgraded_gallery(tmp_path, digit_models, n=64)
    first = history(s.gallery)
    size = cache.stat().st_size
    assert history(s.gallery) == first == fresh() and cache.stat().st_size == size
    monkeypatch.setenv("TZ", "Asia/Tokyo")  # lancedb's commit times are local: an operator's shell elsewhere
    time.tzset()
    try:
        assert history(s.gallery) == first and cache.stat().st_size == size
    finally:
        monkeypatch.undo()  # TZ as it was (set or not), then the process's zone from it
        time.tzset()
    backfill(s, batch_size=16, progress=False)
    with cache.open("a") as f:
        f.write('{"version": 3, "time"')  # a reader killed mid-line
    s = Service.open(tmp_path / "g")
    after_torn = history(s.gallery)
    size = cache.stat().st_size  # the torn line costs itself only: every entry appended after it is kept
    assert history(s.gallery) == after_torn == fresh() and cache.stat().st_size == size
    assert [h["change"] for h in after_torn].count("vectors rewritten") == 4
    prune(s.gallery, dt.timedelta(0))
    kept = history(Service.open(tmp_path / "g").gallery)
    assert kept == fresh() and kept[0]["change"] == "oldest kept version" and len(kept) < len(first) + 4
    line = next(json.loads(x) for x in cache.read_text().splitlines() if json.loads(x)["version"] == kept[0]["version"])
    with cache.open("a") as f:  # what a reader that listed the versions before the prune's cleanup wrote
        f.write(json.dumps({**line, "after": line["version"] - 1, "change": "table maintenance"}) + "\n")
    assert history(Service.open(tmp_path / "g").gallery) == kept
    for p in (tmp_path / "g").iterdir():  # the table goes; the cache file stays behind
        if p != cache:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    s = Service.create(tmp_path / "g", model=digit_models["v2"])
    s.add_items(digit_models["items"][:8], progress=False)
    again = history(s.gallery)
    assert again == fresh() and {h["serving"] for h in again} == {"v2"}


def _backfill_cmd(path, batch_size: int = 4) -> list[str]:
    return [sys.executable, "-m", "compatret", "index", "backfill", str(path), "--batch-size", str(batch_size), "--json"]


@pytest.mark.processes
def test_kill_9_and_sigint_then_resume(tmp_path, digit_models):
    n = 300
    upgraded_gallery(tmp_path, digit_models, n=n)
    env = {**os.environ, "LANCEDB_LOG": "error"}
    rng = np.random.default_rng(0)
    stops = []
    for sig in (signal.SIGKILL, signal.SIGKILL, signal.SIGINT):
        left = Service.open(tmp_path / "g").rows_by_version().get("v1", 0)
        proc = subprocess.Popen(_backfill_cmd(tmp_path / "g", 1), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:  # wait for the first commit of this run
            if Service.open(tmp_path / "g").rows_by_version().get("v1", 0) < left:
                break
            time.sleep(0.05)
        time.sleep(float(rng.uniform(0, 0.3)))
        if proc.poll() is None:
            proc.send_signal(sig)
            stops.append(sig)
        code = proc.wait(timeout=60)
        if sig == signal.SIGINT:  # Ctrl-C: the batch in hand is finished, then exit 130 without a traceback
            err = proc.stderr.read()
            assert stops[-1] == signal.SIGINT, "the backfill finished before Ctrl-C could reach it"
            assert code == 130 and b"Traceback" not in err, err.decode()[-3000:]
    assert len(stops) == 3, "the backfill finished before it could be stopped"
    assert 0 < Service.open(tmp_path / "g").rows_by_version().get("v1", 0) < n
    done = subprocess.run(_backfill_cmd(tmp_path / "g"), env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    rows = snapshot(tmp_path / "g")
    items = digit_models["items"][:n]
    assert len(rows) == n and set(rows) == {it["id"] for it in items}
    assert Service.open(tmp_path / "g").gallery.count() == n
    direct = load_encoder(digit_models["v2"]).encode_items([it["image"] for it in items])
    for it, vec in zip(items, direct):
        assert rows[it["id"]][0] == "v2"
        np.testing.assert_allclose(rows[it["id"]][1], vec, atol=1e-5)


@pytest.mark.processes
def test_queries_keep_working_during_backfill(tmp_path, digit_models):
    upgraded_gallery(tmp_path, digit_models, n=120)
    proc = subprocess.Popen(_backfill_cmd(tmp_path / "g"), env={**os.environ, "LANCEDB_LOG": "error"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reader = Service.open(tmp_path / "g", refresh_seconds=0.01)
    query = [digit_models["items"][3]["image"]]
    answered, versions_seen = 0, set()
    while proc.poll() is None:
        res = reader.query(images=query, k=10)[0]
        assert len(set(res.ids)) == 10 and res.scores == sorted(res.scores, reverse=True)
        versions_seen.update(reader.index.counts())
        answered += 1
    assert proc.returncode == 0 and answered > 3
    assert versions_seen == {"v1", "v2"}  # queries ran against mixed galleries
    latest = Service.open(tmp_path / "g").gallery.version
    deadline = time.time() + 30
    while reader.index.table_version != latest and time.time() < deadline:  # next snapshot builds in the background
        time.sleep(0.05)
    final = reader.query(images=query, k=10)[0]
    assert final.ids[0] == "d3" and final.scores[0] > 0.999
