"""Promises whose earlier tests a one-line bug slipped past (found by mutation testing): every
row's writer is checked on upgrade, a partly bad query or stored row is refused, a repeated add
never stores a row twice, and a view opened before another process wrote moves forward."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from test_service import model_folder, vectors

from compatret import Compat, CompatretError, ModelVersion
from compatret.engine.service import Service
from compatret.store.gallery import Gallery
from compatret.store.history import rollback


def stored_ids(path) -> list[str]:
    """Every row's id as the table holds it (duplicates kept: no dict keyed by id in between)."""
    g = Gallery.open(path)
    return g.scan(["id"]).column("id").to_pylist()


def test_upgrade_checks_every_writer_not_only_the_serving_model(tmp_path):
    """v1 -> v2 (prefix: the first 4 dims) -> v3 (a transform of v2's full space): v3 reads v2's
    rows, but not v1's (the transform needs all 8 dims the prefix dropped). The serving model is
    v2, so only a check of every writer finds the v1 rows."""
    v1 = ModelVersion("v1", 8)
    v2 = ModelVersion("v2", 8, parent=v1, compat=Compat.prefix(4), method="bt2")
    v3 = ModelVersion("v3", 8, parent=v2, compat=Compat.transform("transforms/v3.npy"), method="fct")
    s = Service.create(tmp_path / "g", model=str(model_folder(tmp_path, v1)))
    s.add_vectors(vectors(20, 8), ids=[f"a{i}" for i in range(20)])
    s.upgrade(str(model_folder(tmp_path, v2)))
    s.add_vectors(vectors(5, 8, seed=2), ids=[f"b{i}" for i in range(5)], model="v2")
    folder = model_folder(tmp_path, v3)
    (folder / "transforms").mkdir()
    np.save(folder / "transforms" / "v3.npy", np.vstack([np.eye(8, dtype=np.float32), np.zeros((1, 8), np.float32)]))
    before = Gallery.open(tmp_path / "g").latest_version()
    with pytest.raises(CompatretError, match="v1"):
        s.upgrade(str(folder))
    after = Service.open(tmp_path / "g")
    assert after.meta.serving.id == "v2" and after.gallery.latest_version() == before
    assert not (tmp_path / "g" / "transforms" / "v3.npy").exists()  # a refusal copies nothing


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_partly_bad_query_row_is_refused_by_its_index(tmp_path, bad):
    s = Service.create(tmp_path / "g", dim=4, version_id="v1")
    s.add_vectors(vectors(10, 4), ids=[str(i) for i in range(10)])
    q = vectors(3, 4, seed=1)
    q[2, 1] = bad  # one value of the last row: the others are fine
    with pytest.raises(CompatretError, match="query vector 2 contains NaN or infinity"):
        s.query(vectors=q, k=3)
    assert len(s.query(vectors=q[:2], k=3)) == 2


def test_a_partly_bad_stored_row_refuses_the_whole_add(tmp_path):
    s = Service.create(tmp_path / "g", dim=4, version_id="v1")
    x = vectors(30, 4)
    x[17, 3] = np.nan
    with pytest.raises(CompatretError, match="NaN or infinity"):
        s.add_vectors(x, ids=[str(i) for i in range(30)], batch_size=10)  # the bad row is in the second batch
    assert stored_ids(tmp_path / "g") == []  # checked before the first commit: all or nothing


def test_repeated_adds_store_each_row_once(tmp_path, digit_models):
    s = Service.create(tmp_path / "g", model=digit_models["v1"])
    items = digit_models["items"][:12]
    assert s.add_items(items[:8], batch_size=3, progress=False) == 8
    assert s.add_items(items, batch_size=3, progress=False) == 4  # a rerun after an interruption: the rest only
    assert s.add_items(items, progress=False) == 0
    ids = stored_ids(tmp_path / "g")
    assert len(ids) == 12 and sorted(ids) == sorted(str(it["id"]) for it in items)
    x = vectors(50, 4)
    v = Service.create(tmp_path / "v", dim=4, version_id="v1")
    assert v.add_vectors(x[:30], ids=[str(i) for i in range(30)], batch_size=7) == 30
    assert v.add_vectors(x, ids=[str(i) for i in range(50)], batch_size=7) == 20
    ids = stored_ids(tmp_path / "v")
    assert len(ids) == 50 and len(set(ids)) == 50


def test_an_id_stored_with_other_content_is_refused_and_the_same_content_skipped(tmp_path, digit_models):
    """Content is title, text, image bytes and metadata; empty and missing are the same."""
    s = Service.create(tmp_path / "g", model=digit_models["v1"])
    a, b, c = digit_models["items"][:3]
    first = {**a, "title": "a digit", "text": "its caption", "metadata": {"label": 1, "src": "x"}}
    bare = {"id": c["id"], "image": c["image"]}
    assert s.add_items([first, bare], progress=False) == 2
    assert s.add_items([{**first, "metadata": json.dumps(first["metadata"])}], progress=False) == 0  # as stored: JSON text
    assert s.add_items([{**bare, "title": "", "text": "", "metadata": {}}], progress=False) == 0  # empty is missing
    for change in ({"title": "another"}, {"text": "another"}, {"image": b["image"]}, {"metadata": {"label": 2, "src": "x"}},
                   {"title": None}, {"text": None}, {"metadata": None}):
        with pytest.raises(CompatretError, match=f"1 ids are already in the gallery with other content, e.g. '{a['id']}'"):
            s.add_items([{**first, **change}], progress=False)
    with pytest.raises(CompatretError, match="with other content"):
        s.add_items([{**bare, "title": "now titled"}], progress=False)
    assert sorted(stored_ids(tmp_path / "g")) == sorted([a["id"], c["id"]])


def test_counts_add_up_over_fragments_and_bare_rows_are_not_pending(tmp_path, digit_models):
    """Rows of one model in several fragments count once each; rows stored as bare vectors (nothing
    to re-embed) are reported apart from the rows a backfill will do."""
    from compatret.engine.overview import overview
    from compatret.store.pending import pending_counts, pending_rows

    s = Service.create(tmp_path / "g", model=digit_models["v1"])
    items = digit_models["items"][:20]
    s.add_items(items[:12], progress=False)  # one fragment
    s.add_items(items[12:], progress=False)  # and another
    s.add_vectors(vectors(5, 16, seed=2), ids=[f"bare{i}" for i in range(5)])  # vectors only: nothing to re-embed them from
    assert overview(s)["rows_by_version"] == {"v1": 25} and overview(s)["rows"] == 25
    s.upgrade(digit_models["v2"])
    assert pending_counts(s.gallery, s.rows_by_version()) == (20, 5)
    pending = pending_rows(s.gallery)
    assert len(pending.ids) == 20 and sorted(pending.unembeddable) == [f"bare{i}" for i in range(5)]


def test_prune_keeps_the_latest_version_only_and_says_what_it_did(tmp_path):
    import datetime as dt
    import warnings

    from compatret.store.history import prune, rollback
    from compatret.store.writer_lock import holder

    s = Service.create(tmp_path / "g", dim=4, version_id="v1")
    for n in range(3):
        s.add_vectors(vectors(5, 4, seed=n), ids=[f"{n}-{i}" for i in range(5)])
    before = len(s.gallery.table.list_versions())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        out = prune(s.gallery, dt.timedelta(0))
    after = len(s.gallery.table.list_versions())  # the compaction's own version and the latest
    assert out == {"versions_before": before, "versions_after": after} and after <= 2 < before
    assert not [w for w in seen if "cleanup_older_than" in str(w.message)]  # what was asked is not warned about
    assert holder(tmp_path / "g")["command"] == "prune"  # a writer waiting meanwhile is told who holds the lock
    assert Service.open(tmp_path / "g").count() == 15
    with pytest.raises(CompatretError, match="pruned versions are gone"):
        rollback(s.gallery, 2)


def test_a_prune_that_keeps_losing_commit_races_fails_with_one_line(tmp_path, monkeypatch):
    import datetime as dt

    from lance.commit import CommitConflictError

    from compatret.store.history import prune

    s = Service.create(tmp_path / "g", dim=4, version_id="v1")
    table = s.gallery.table
    refreshed = []
    monkeypatch.setattr(table, "optimize", lambda **_: (_ for _ in ()).throw(CommitConflictError("lost the race")))
    monkeypatch.setattr(table, "checkout_latest", lambda: refreshed.append(1))
    with pytest.raises(CompatretError, match=r"^prune: commit conflict with another writer after 5 tries \(lost the race\)$"):
        prune(s.gallery, dt.timedelta(0))
    assert len(refreshed) >= 5  # each retry reads the latest version first


def _set_meta_again(s: Service) -> None:
    with s.gallery.writing("test"):
        s.gallery.set_meta(s.gallery.meta)


@pytest.mark.parametrize("what, method, write", [
    ("add", "add", lambda s: s.add_vectors(vectors(1, 4), ids=["c"])),
    ("delete", "delete", lambda s: s.delete(["a"])),
    ("rollback", "restore", lambda s: rollback(s.gallery, 1)),
    ("metadata update", "update_field_metadata", _set_meta_again),
])
def test_every_commit_that_keeps_losing_races_names_itself_and_rereads_before_each_retry(tmp_path, monkeypatch, what, method, write):
    from lance.commit import CommitConflictError

    s = Service.create(tmp_path / "g", dim=4, version_id="v1")
    s.add_vectors(vectors(2, 4), ids=["a", "b"])
    table = s.gallery.table
    refreshed = []
    monkeypatch.setattr(table, method, lambda *_, **__: (_ for _ in ()).throw(CommitConflictError("lost the race")))
    monkeypatch.setattr(table, "checkout_latest", lambda: refreshed.append(1))
    with pytest.raises(CompatretError, match=rf"^{what}: commit conflict with another writer after 5 tries \(lost the race\)$"):
        write(s)
    assert len(refreshed) >= 5  # each retry reads the latest version first


def test_a_compaction_that_keeps_losing_races_names_itself_and_rereads_before_each_retry(tmp_path, monkeypatch):
    import sys

    from lance.commit import CommitConflictError

    optimizer = sys.modules["lance.dataset"].DatasetOptimizer  # (`lance.dataset` is also the name of a function)
    s = Service.create(tmp_path / "g", dim=4, version_id="v1")
    s.add_vectors(vectors(2, 4), ids=["a", "b"])
    refreshed = []
    monkeypatch.setattr(optimizer, "compact_files", lambda *_, **__: (_ for _ in ()).throw(CommitConflictError("lost the race")))
    monkeypatch.setattr(s.gallery.table, "checkout_latest", lambda: refreshed.append(1))
    with s.gallery.writing("compact"):
        with pytest.raises(CompatretError, match=r"^compaction: commit conflict with another writer after 5 tries \(lost the race\)$"):
            s.gallery.compact()
    assert len(refreshed) >= 5  # each retry reads the latest version first


def test_crowding_is_the_mean_cosine_to_the_nearest_other_rows_and_orders_the_uncertain_first(tmp_path):
    """With every row a landmark the proxy is exact: brute force over all pairs, the row itself left out."""
    from compatret.core.transforms import normalize
    from compatret.engine.backfill import crowding, plan_order

    rng = np.random.default_rng(3)
    crowded = normalize(np.ones((40, 8)) + 0.05 * rng.normal(size=(40, 8)))  # one tight cluster
    spread = normalize(rng.normal(size=(60, 8)))
    x = np.vstack([crowded, spread]).astype(np.float32)
    ids = [f"c{i}" for i in range(40)] + [f"s{i}" for i in range(60)]
    s = Service.create(tmp_path / "g", dim=8, version_id="v1")
    s.add_vectors(x[:50], ids=ids[:50])
    s.add_vectors(x[50:], ids=ids[50:])  # two fragments: every one is read
    asked = ids[::3] + ["not-stored"]
    got = crowding(s, asked, neighbours=5)
    cos = x @ x.T
    np.fill_diagonal(cos, -np.inf)
    want = {ids[n]: float(np.sort(cos[n])[::-1][:5].mean()) for n in range(100)}
    assert set(got) == set(ids[::3])  # rows the view lacks have no score
    for i in got:
        assert got[i] == pytest.approx(want[i], abs=1e-5), i
    s.upgrade(str(model_folder(tmp_path, ModelVersion("v2", 8, parent=ModelVersion("v1", 8, "vector", method="external"),
                                                      compat=Compat.identity(), method="external"))))
    s.add_vectors(normalize(rng.normal(size=(20, 8))), ids=[f"n{i}" for i in range(20)], model="v2")
    with s.gallery.writing("compact"):
        s.gallery.compact()  # one fragment holds rows of both versions now: each version's rows are read apart
    fragments = s.gallery.dataset(s.gallery.latest_version()).get_fragments()
    assert any(len(set(f.to_table(columns=["model_version"]).column(0).to_pylist())) == 2 for f in fragments)
    assert crowding(Service.open(tmp_path / "g"), asked, neighbours=5) == pytest.approx(got, abs=1e-5)
    one = crowding(s, asked, neighbours=1)
    assert all(one[i] == pytest.approx(float(np.max(cos[ids.index(i)])), abs=1e-5) for i in one)  # the nearest other row
    later = crowding(s, ids[60:70], neighbours=5)  # rows of the second fragment only: the first has none of them
    assert set(later) == set(ids[60:70])
    sampled = crowding(s, ids[:40], landmarks=20)  # fewer landmarks than rows: the same sample on every call
    assert sampled == crowding(s, ids[:40], landmarks=20)
    from compatret.search.kernels import sample_parts

    marks = sample_parts([(lab, vec) for _, lab, vec in s.index.rows("v1")], 20, np.random.default_rng(0))
    for n, i in enumerate(ids[:40]):  # brute force over that sample: the row itself, when drawn, left out
        near = np.sort(marks @ x[n])[::-1]
        near = near[1:11] if near[0] > 1 - 1e-5 else near[:10]  # 10 neighbours by default
        assert sampled[i] == pytest.approx(float(near.mean()), abs=1e-5), i
    ten = crowding(s, asked)  # what the backfill order reads: 10 neighbours
    ten_by_hand = {ids[n]: float(np.sort(cos[n])[::-1][:10].mean()) for n in range(100)}
    assert all(ten[i] == pytest.approx(ten_by_hand[i], abs=1e-5) for i in ten)
    order = plan_order(s, asked, "uncertainty")
    assert order == sorted(ids[::3], key=lambda i: (-ten[i], i)) + ["not-stored"]
    assert set(order[: len(ids[:40:3])]) == set(ids[:40:3])  # the crowded cluster first


def test_history_read_through_a_handle_opened_before_the_last_writes_describes_them(tmp_path):
    from compatret.store.history import history

    s = Service.create(tmp_path / "g", dim=4, version_id="v1")
    s.add_vectors(vectors(5, 4), ids=[str(i) for i in range(5)])
    old = Gallery.open(tmp_path / "g")  # its table is checked out before the next two writes
    Service.open(tmp_path / "g").add_vectors(vectors(3, 4, seed=1), ids=["a", "b", "c"])
    Service.open(tmp_path / "g").delete(["0"])
    entries = history(old)  # nothing cached yet: every entry read through this handle
    assert [(e["rows"], e["change"]) for e in entries[-2:]] == [(8, "rows +3"), (7, "rows -1")]


def test_history_names_every_version_as_a_person_reads_it(tmp_path):
    from compatret.store.history import HISTORY_CACHE, describe_event, history

    v1 = ModelVersion("v1", 4)
    v2 = ModelVersion("v2", 6, parent=v1, compat=Compat.prefix(4), method="bt2")
    s = Service.create(tmp_path / "g", model=str(model_folder(tmp_path, v1)))
    s.add_vectors(vectors(5, 4), ids=[str(i) for i in range(5)])
    s.upgrade(str(model_folder(tmp_path, v2)))
    s.add_vectors(vectors(3, 6, seed=1), ids=["a", "b", "c"], model="v2")
    want = [(1, 0, "v1", "table created"), (2, 0, "v1", "created with v1"), (3, 5, "v1", "rows +5"), (4, 5, "v1", "index built"),
            (5, 5, "v2", "upgrade from v1 to v2"), (6, 5, "v2", "column added"), (7, 5, "v2", "v2 registered for the rows it writes"),
            (8, 8, "v2", "rows +3")]  # fmt: skip
    assert [(e["version"], e["rows"], e["serving"], e["change"]) for e in history(Gallery.open(tmp_path / "g"))] == want
    with open(tmp_path / "g" / HISTORY_CACHE, "ab") as f:  # a torn line, not even UTF-8: skipped, the rest still used
        f.write(b'{"version": 9, "format": \xff\xfe\n')
    assert [(e["version"], e["rows"], e["serving"], e["change"]) for e in history(Gallery.open(tmp_path / "g"))] == want
    assert describe_event({"event": "upgrade", "previous": "a", "model": "b", "gate": {"queries": 3}}) == "upgrade from a to b (gate passed)"
    assert describe_event({"event": "rollback", "to": 4}) == "rollback to version 4"
    assert describe_event({"event": "shard", "index": 0}) == "shard"


def test_text_items_stored_alike_are_skipped(tmp_path):
    s = Service.create(tmp_path / "g", model="minilm-l3")
    items = [{"id": "t1", "title": "Aspirin", "text": "reduces fever"}, {"id": "t2", "text": "no title here"}]
    assert s.add_items(items, progress=False) == 2
    assert s.add_items(items, progress=False) == 0  # no image: compared on title, text and metadata
    with pytest.raises(CompatretError, match="other content"):
        s.add_items([{"id": "t2", "text": "changed"}], progress=False)


def test_the_rerank_reads_live_rows_by_label_in_order_through_the_plan_and_refuses_any_other(tmp_path):
    s = Service.create(tmp_path / "g", dim=4, version_id="v1")
    x = vectors(30, 4)
    s.add_vectors(x[:20], ids=[str(i) for i in range(20)])
    s.add_vectors(x[20:], ids=[str(i) for i in range(20, 30)])
    index = s.index
    labels = np.concatenate([lab for _, lab, _ in index.rows("v1")])
    order = np.random.default_rng(0).permutation(len(labels))  # labels of both fragments, mixed
    stored = {int(lab): vec for _, labs, vecs in index.rows("v1") for lab, vec in zip(labs, np.asarray(vecs))}
    np.testing.assert_array_equal(index.vectors_of("v1", labels[order]), np.stack([stored[int(lab)] for lab in labels[order]]))
    np.testing.assert_allclose(index.vectors_of("v1", labels[:3], mapper=lambda v: 2 * v), 2 * np.stack([stored[int(lab)] for lab in labels[:3]]))
    for bad in (labels[:1] + (1 << 40), labels[-1:] + 1000):  # a fragment the view lacks; an offset past its rows
        with pytest.raises(RuntimeError, match="stale kernel"):
            index.vectors_of("v1", bad)
    with pytest.raises(RuntimeError, match="stale kernel"):
        index.vectors_of("v2", labels[5:6])  # no rows of that version there
    gone = index.ids_of(labels[:2])[0].tolist()
    s.delete(gone)  # rows that were live: not any more
    with pytest.raises(RuntimeError, match="stale kernel"):
        s.index.vectors_of("v1", labels[:2])


WRITER = """
import sys, numpy as np
from compatret.engine.service import Service
s = Service.open(sys.argv[1])
rng = np.random.default_rng(7)
s.add_vectors(rng.normal(size=(5, 4)).astype(np.float32), ids=[f"new{i}" for i in range(5)])
s.delete(["0", "1"])
"""


def test_a_view_opened_before_another_process_wrote_moves_forward(tmp_path):
    """The same Service object (its view and kernels built) answers from the other process's
    write: new rows found, deleted rows gone, no reader opened afresh in between."""
    s = Service.create(tmp_path / "g", dim=4, version_id="v1")
    x = vectors(40, 4)
    s.add_vectors(x, ids=[str(i) for i in range(40)])
    old = s.index
    assert s.query(vectors=x[:1], k=1)[0].ids == ["0"]
    env = {**os.environ, "LANCEDB_LOG": "error"}
    subprocess.run([sys.executable, "-c", WRITER, str(tmp_path / "g")], check=True, env=env, timeout=120)
    new = np.random.default_rng(7).normal(size=(5, 4)).astype(np.float32)
    hits = s.query(vectors=np.vstack([new, x[:2]]), k=1)
    assert [h.ids[0] for h in hits[:5]] == [f"new{i}" for i in range(5)]
    assert hits[5].ids[0] != "0" and hits[6].ids[0] != "1"
    assert s.index is not old and s.index.size == 43
    assert json.dumps(sorted(stored_ids(tmp_path / "g"))) == json.dumps(sorted([str(i) for i in range(2, 40)] + [f"new{i}" for i in range(5)]))


def test_nothing_pending_once_every_row_is_on_the_serving_model(tmp_path):
    from compatret.store.pending import pending_counts, pending_rows

    s = Service.create(tmp_path / "g", dim=4, version_id="v1")
    s.add_vectors(vectors(6, 4), ids=[str(i) for i in range(6)])
    assert pending_counts(s.gallery, s.rows_by_version()) == (0, 0)
    assert pending_rows(s.gallery).ids == [] and pending_rows(s.gallery).unembeddable == []


def test_the_writer_lock_timeout_comes_from_the_environment(monkeypatch):
    from compatret.store.writer_lock import DEFAULT_TIMEOUT_S, lock_timeout

    monkeypatch.setenv("COMPATRET_LOCK_TIMEOUT", "0.25")
    assert lock_timeout() == 0.25
    monkeypatch.setenv("COMPATRET_LOCK_TIMEOUT", "soon")
    with pytest.raises(CompatretError, match="COMPATRET_LOCK_TIMEOUT must be a number of seconds, got 'soon'"):
        lock_timeout()
    monkeypatch.delenv("COMPATRET_LOCK_TIMEOUT")
    assert lock_timeout() == DEFAULT_TIMEOUT_S == 60.0


def test_items_are_parsed_one_way_for_every_add_path(tmp_path):
    """data.items.normal_item, which local, Ray and HTTP adds all use: a BEIR `_id`, a pandas
    NaN gap, an image read from its path, a Parquet `label` as metadata; parsing twice changes nothing."""
    from compatret.data.items import normal_item

    (tmp_path / "a.png").write_bytes(b"png bytes")
    item = normal_item({"_id": 7, "title": "T", "text": float("nan"), "image_path": str(tmp_path / "a.png"), "label": 3})
    assert item == {"id": "7", "title": "T", "text": None, "image": b"png bytes", "metadata": {"label": 3}}
    assert normal_item(item) == item
    assert normal_item({"id": "x", "text": "t", "metadata": '{"a": 1}'})["metadata"] == {"a": 1}
    with pytest.raises(CompatretError, match="metadata must be an object"):
        normal_item({"id": "x", "text": "t", "metadata": [1]})
    with pytest.raises(CompatretError, match="cannot read image"):
        normal_item({"id": "y", "image_path": str(tmp_path / "missing.png")})


def test_a_writer_that_waits_too_long_says_who_holds_the_lock_and_gives_up(tmp_path):
    """Another thread holds the lock (a new lock object per write, so threads of one process exclude
    each other too): the second writer gives up after its timeout with one line naming the holder,
    or 'another writer' when the holder left no note; once the holder is done the lock is free."""
    import os
    import re
    import threading
    import time

    from compatret.store.writer_lock import HOLDER_FILE, writer_lock

    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with writer_lock(tmp_path, "index backfill"):
            taken.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert taken.wait(30)
        t0 = time.monotonic()
        with pytest.raises(CompatretError) as err:
            with writer_lock(tmp_path, "index add", timeout=0.3):
                pass
        assert 0.3 <= time.monotonic() - t0 < 5
        since = json.loads((tmp_path / HOLDER_FILE).read_text())["since"]  # when the holder took it, in UTC
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", since), since
        pattern = (rf"gallery {re.escape(str(tmp_path))} is being written by pid {os.getpid()} \(index backfill\) since {re.escape(since)}; "
                   r"gave up after 0\.3 s \(set COMPATRET_LOCK_TIMEOUT to wait longer\)")
        assert re.fullmatch(pattern, str(err.value)), str(err.value)
        (tmp_path / HOLDER_FILE).unlink()
        with pytest.raises(CompatretError, match=r"is being written by another writer; gave up after 0\.2 s"):
            with writer_lock(tmp_path, "index add", timeout=0.2):
                pass
    finally:
        release.set()
        t.join()
    with writer_lock(tmp_path, "index add", timeout=5):  # the holder is gone: its lock is free
        pass


@pytest.mark.parametrize("raised, shown", [("", "CommitConflictError"), ("first line\nsecond line", "first line"), ("  padded  \n", "padded")],
                         ids=["empty", "two-lines", "padded"])
def test_a_commit_that_keeps_losing_races_backs_off_and_shows_the_first_line_of_its_error(monkeypatch, raised, shown):
    from lance.commit import CommitConflictError

    import compatret.store.writer_lock as writer_lock

    waits: list[float] = []
    monkeypatch.setattr(writer_lock.time, "sleep", waits.append)
    calls = []

    def losing() -> None:
        calls.append(1)
        raise CommitConflictError(raised)

    with pytest.raises(CompatretError) as refused:
        writer_lock.retry_commit(losing, "add")
    assert str(refused.value) == f"add: commit conflict with another writer after 5 tries ({shown})"
    assert len(calls) == 5 and waits == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.8])


def test_a_commit_that_wins_after_lost_races_returns_its_result_having_reread_before_each_retry(monkeypatch):
    from lance.commit import CommitConflictError

    import compatret.store.writer_lock as writer_lock

    monkeypatch.setattr(writer_lock.time, "sleep", lambda _: None)
    outcomes, rereads = [CommitConflictError("lost"), CommitConflictError("lost"), 7], []

    def commit() -> int:
        out = outcomes.pop(0)
        if isinstance(out, Exception):
            raise out
        return out

    assert writer_lock.retry_commit(commit, "add", lambda: rereads.append(1)) == 7
    assert rereads == [1, 1] and not outcomes


@pytest.mark.parametrize("what, method", [("new vector column", "add_columns"), ("id index", "create_index")])
def test_a_schema_or_index_commit_that_keeps_losing_races_names_itself_and_rereads_before_each_retry(tmp_path, monkeypatch, what, method):
    from lance.commit import CommitConflictError

    import compatret.store.writer_lock as writer_lock

    v1 = ModelVersion("v1", 4)
    s = Service.create(tmp_path / "g", model=str(model_folder(tmp_path, v1)))
    s.upgrade(str(model_folder(tmp_path, ModelVersion("v2", 6, parent=v1, compat=Compat.prefix(4), method="bt2"))))
    table = s.gallery.table
    refreshed = []
    monkeypatch.setattr(writer_lock.time, "sleep", lambda _: None)
    monkeypatch.setattr(table, method, lambda *_, **__: (_ for _ in ()).throw(CommitConflictError("lost the race")))
    monkeypatch.setattr(table, "checkout_latest", lambda: refreshed.append(1))
    with pytest.raises(CompatretError, match=rf"^{what}: commit conflict with another writer after 5 tries \(lost the race\)$"):
        s.add_vectors(vectors(2, 6), ids=["a", "b"], model="v2")  # the first v2 rows: a new column, then the id index
    assert len(refreshed) >= 5
