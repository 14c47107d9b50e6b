"""The public Python API (`compatret.open` / `compatret.create` -> Index): one object, the same
answers for a gallery and a sharded one; what it adds over the engine (metadata filters, upsert,
get, vectors, missing_ok deletes) checked against brute force on real tables."""

from __future__ import annotations

import numpy as np
import pytest

import compatret
from compatret import CompatretError
from compatret.core.transforms import normalize


def rows(n: int = 60, d: int = 8, seed: int = 0) -> np.ndarray:
    return normalize(np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32))


@pytest.fixture(params=[None, 3], ids=["single", "sharded"])
def index(request, tmp_path):
    made = compatret.create(tmp_path / "g", dim=8, version_id="ext", modality="text", shards=request.param)
    made.add(vectors=rows(), ids=[f"r{i}" for i in range(60)])
    return made


def test_open_gives_the_same_gallery_whichever_kind_it_is(index):
    again = compatret.open(index.path)
    assert again.sharded == index.sharded and len(again) == 60 and again.serving == "ext"
    q = rows(3, seed=1)
    exact = np.argsort(-(rows() @ q.T), axis=0)[:5].T
    assert [r.ids for r in again.query(vectors=q, k=5)] == [[f"r{i}" for i in e] for e in exact]


def test_a_filter_is_exact_even_for_matches_ranked_last(tmp_path):
    """The two rows a full ranking puts last are tagged: a filtered top-2 must widen past every other row."""
    text = compatret.create(tmp_path / "t", model="minilm-l3")
    texts, ids = [f"row {i}" for i in range(100)], [f"t{i}" for i in range(100)]
    text.add(texts, ids=ids, metadatas=[{"n": i} for i in range(100)])
    ranking = text.query(["row 7"], k=100)[0]
    last = [ids.index(i) for i in ranking.ids[-2:]]
    text.upsert([texts[i] for i in last], [ids[i] for i in last], [{"n": i, "tag": "x"} for i in last])
    hits = text.query(["row 7"], k=2, where={"tag": "x"})[0]
    assert hits.ids == ranking.ids[-2:] and hits.scores == pytest.approx(ranking.scores[-2:], abs=1e-5)
    assert text.query(["row 7"], k=3, where=lambda m: m["n"] < 2)[0].ids[0] in {"t0", "t1"}
    assert text.query(["row 7"], k=3, where={"tag": "none"})[0].ids == []


def test_rows_without_metadata_match_no_filter(index):
    assert index.query(vectors=rows(1), k=3, where={"tag": "x"})[0].ids == []
    assert len(index.query(vectors=rows(1), k=3, where=lambda m: m == {})[0].ids) == 3


def test_get_keeps_the_order_asked_and_leaves_out_what_is_not_there(index):
    got = index.get(["r5", "nope", "r1", "r5"])
    assert [r["id"] for r in got] == ["r5", "r1"] and got[0]["model_version"] == "ext"


def test_delete_is_all_or_nothing_unless_missing_ok(index):
    with pytest.raises(CompatretError, match="not in the gallery"):
        index.delete(["r1", "nope"])
    assert len(index) == 60
    assert index.delete(["r1", "nope", "r1"], missing_ok=True) == 1
    assert index.existing(["r1", "r2"]) == ["r2"] and len(index) == 59
    assert index.delete(["gone"], missing_ok=True) == 0


def test_vectors_are_the_stored_rows_in_the_order_asked(index):
    v = index.vectors(["r3", "r0"])
    np.testing.assert_allclose(v, rows()[[3, 0]], atol=1e-6)
    with pytest.raises(CompatretError, match="not in the gallery"):
        index.vectors(["r3", "nope"])


def test_history_rollback_verify_info_speak_for_both_kinds(index):
    index.delete(["r0"])
    entries = index.history()
    assert entries[-1]["event"] == "delete" if index.sharded else entries[-1]["rows"] == 59
    before = entries[-2]["version" if not index.sharded else "snapshot"]
    out = index.rollback(before)
    assert out["restored"] == before and len(index) == 60
    assert index.verify()["ok"] is True
    info = index.info()
    assert info["rows"] == 60 and info["serving_model"] == "ext"


def test_upsert_replaces_only_what_changed(tmp_path):
    index = compatret.create(tmp_path / "g", model="minilm-l3")
    index.add(["alpha", "beta"], ids=["a", "b"], metadatas=[{"k": 1}, None])
    version = index.engine.gallery.version
    assert index.upsert(["alpha", "beta"], ids=["a", "b"], metadatas=[{"k": 1}, None]) == 0
    assert index.engine.gallery.version == version  # nothing changed, nothing written
    index.upsert(["alpha", "beta, again"], ids=["a", "b"], metadatas=[{"k": 1}, {"k": 2}])
    assert [(r["text"], r["metadata"]) for r in index.get(["a", "b"])] == [("alpha", {"k": 1}), ("beta, again", {"k": 2})]
    with pytest.raises(CompatretError, match="2 ids for 1 texts"):
        index.add(["x"], ids=["x", "y"])


def test_a_failed_upsert_changes_nothing(tmp_path, monkeypatch):
    """The replacement is embedded before anything is deleted: a model that fails, or bad input,
    leaves the stored rows as they were (a delete-then-add would have lost them)."""
    from compatret.engine.service import Service

    index = compatret.create(tmp_path / "g", model="minilm-l3")
    index.add(["alpha", "beta"], ids=["a", "b"])
    version = index.engine.gallery.version

    class Broken:
        def encode_items(self, items, **_):
            raise RuntimeError("the embedding service is down")

    with monkeypatch.context() as m:
        m.setattr(Service, "encoder", lambda self, *a, **k: Broken())
        with pytest.raises(RuntimeError, match="down"):
            index.upsert(["alpha, edited"], ids=["a"])
    for texts, ids, message in ((["x", "y"], ["a", "a"], "given twice"), ([""], ["b"], "empty"), (["x"], None, "needs an id")):
        with pytest.raises(CompatretError, match=message):
            index.upsert(texts, ids=ids)
    assert index.engine.gallery.version == version
    assert [r["text"] for r in index.get(["a", "b"])] == ["alpha", "beta"]


def test_one_string_where_a_list_belongs_is_one_clear_error(index):
    for call in (lambda: index.get("r1"), lambda: index.delete("r1"), lambda: index.vectors("r1"), lambda: index.query("r1")):
        with pytest.raises(CompatretError, match="not one string"):
            call()
    assert len(index) == 60


def test_query_and_add_refuse_what_they_would_otherwise_ignore(index):
    q = rows(1)
    with pytest.raises(CompatretError, match="k must be >= 1"):
        index.query(vectors=q, k=0, where={"a": 1})
    with pytest.raises(CompatretError, match="exactly one"):
        index.query(k=3, where={"a": 1})
    with pytest.raises(CompatretError, match="metadatas"):
        index.add(vectors=rows(1), ids=["z"], metadatas=[{"a": 1}])
    with pytest.raises(CompatretError, match="ids and metadatas go with texts"):
        index.add(items=[{"id": "z", "text": "t"}], ids=["z"])
    assert len(index) == 60


def test_vectors_keep_a_repeated_id_in_place(index):
    v = index.vectors(["r2", "r1", "r2"])
    assert v.shape == (3, 8)
    np.testing.assert_allclose(v[0], v[2])
