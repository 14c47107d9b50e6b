"""Galleries on real LanceDB tables with real faiss search: writes, upgrades, lineage, recovery."""

from __future__ import annotations

import numpy as np
import pytest

from compatret import Compat, CompatretError, ModelVersion
from compatret.store.gallery import Gallery
from compatret.search.fragments import CACHE_DIR
from compatret.engine.service import Service
from compatret.core.transforms import normalize


def vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    return normalize(np.random.default_rng(seed).normal(size=(n, d)))


def model_folder(tmp_path, version: ModelVersion):
    d = tmp_path / version.id
    d.mkdir()
    version.save(d)
    return d


def test_add_query_reopen_delete(tmp_path):
    x = vectors(500, 16)
    s = Service.create(tmp_path / "g", dim=16, version_id="v1")
    s.add_vectors(x, ids=[f"doc{i}" for i in range(500)], batch_size=128)
    assert s.gallery.count() == 500
    res = s.query(vectors=x[:5], k=3)
    assert [r.ids[0] for r in res] == [f"doc{i}" for i in range(5)]
    assert all(r.scores == sorted(r.scores, reverse=True) for r in res)
    s2 = Service.open(tmp_path / "g")
    assert s2.query(vectors=x[7:8], k=1)[0].ids == ["doc7"]
    s2.delete(["doc7", "doc8"])
    s3 = Service.open(tmp_path / "g")
    assert s3.gallery.count() == 498
    assert s3.query(vectors=x[7:8], k=1)[0].ids != ["doc7"]
    exact = normalize(np.delete(x, [7, 8], axis=0)) @ x[9]
    assert s3.query(vectors=x[9:10], k=1)[0].scores[0] == pytest.approx(exact.max(), abs=1e-5)


def test_bad_input_writes_nothing(tmp_path):
    s = Service.create(tmp_path / "g", dim=8, version_id="v1")
    s.add_vectors(vectors(10, 8), ids=[str(i) for i in range(10)])
    version = s.gallery.version
    with pytest.raises(CompatretError, match="already in the gallery"):
        s.add_vectors(vectors(3, 8), ids=["a", "b", "3"])
    with pytest.raises(CompatretError, match="duplicate"):
        s.add_vectors(vectors(2, 8), ids=["x", "x"])
    with pytest.raises(CompatretError, match="shape"):
        s.add_vectors(vectors(2, 9), ids=["p", "q"])
    bad = vectors(2, 8)
    bad[0, 0] = np.nan
    with pytest.raises(CompatretError, match="NaN"):
        s.add_vectors(bad)
    with pytest.raises(CompatretError, match="not in the gallery"):
        s.delete(["1", "nope"])
    assert s.gallery.version == version and s.gallery.count() == 10


def test_stale_cache_is_rebuilt_from_the_table(tmp_path):
    x = vectors(50, 8)
    s = Service.create(tmp_path / "g", dim=8, version_id="v1")
    s.add_vectors(x, ids=[str(i) for i in range(len(x))])
    # a write that reached the table but not the cache (a crash between the two)
    g = Gallery.open(tmp_path / "g")
    with g.writing("test"):
        g.add_rows(["late"], vectors(1, 8, seed=9), g.meta.vector_model)
    s2 = Service.open(tmp_path / "g")
    assert s2.index.size == 51
    assert s2.query(vectors=vectors(1, 8, seed=9), k=1)[0].ids == ["late"]
    # a corrupted cache file is rebuilt too
    next((tmp_path / "g" / CACHE_DIR).glob("frag-*/vec-0.npy")).write_bytes(b"garbage")
    assert Service.open(tmp_path / "g").index.size == 51


def test_upgrade_is_metadata_only_and_keeps_cache(tmp_path):
    v1 = ModelVersion("v1", 8)
    v2 = ModelVersion("v2", 12, parent=v1, compat=Compat.prefix(8), method="bt2")
    s = Service.create(tmp_path / "g", model=str(model_folder(tmp_path, v1)))
    x = vectors(100, 8)
    s.add_vectors(x, ids=[str(i) for i in range(len(x))])
    s.index  # the cache of the v1 rows
    cached = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "g" / CACHE_DIR).iterdir()}
    before = s.gallery.version
    s.upgrade(str(model_folder(tmp_path, v2)))
    s2 = Service.open(tmp_path / "g")
    assert s2.meta.serving.id == "v2" and s2.meta.vector_model.id == "v1"
    assert s2.gallery.version != before
    s2.index  # a metadata commit changes no fragment: the cache is used as it is, nothing rewritten
    assert {f.name: f.stat().st_mtime_ns for f in (tmp_path / "g" / CACHE_DIR).iterdir()} == cached
    # a v2 query (12-d) whose first 8 dims are a stored vector finds it
    q = np.hstack([x[3:4], np.ones((1, 4), np.float32)])
    assert s2.query(vectors=q, k=1)[0].ids == ["3"]
    assert s2.query(vectors=x[3:4], model="v1", k=1)[0].ids == ["3"]
    with pytest.raises(CompatretError, match="shape"):
        s2.query(vectors=x[3:4], k=1)


def test_incompatible_upgrade_is_refused(tmp_path):
    v1 = ModelVersion("v1", 8)
    s = Service.create(tmp_path / "g", model=str(model_folder(tmp_path, v1)))
    before = s.meta
    with pytest.raises(CompatretError, match="cannot read this gallery.s rows"):
        s.upgrade(str(model_folder(tmp_path, ModelVersion("stranger", 8))))
    assert Service.open(tmp_path / "g").meta == before


def test_transform_upgrade_maps_stored_vectors(tmp_path):
    v1 = ModelVersion("v1", 6)
    s = Service.create(tmp_path / "g", model=str(model_folder(tmp_path, v1)))
    x = vectors(200, 6)
    s.add_vectors(x, ids=[str(i) for i in range(len(x))])
    rng = np.random.default_rng(1)
    w = rng.normal(size=(6, 6)).astype(np.float32)
    v2 = ModelVersion("v2", 6, parent=v1, compat=Compat.transform("transforms/v2.npy"), method="fct")
    folder = model_folder(tmp_path, v2)
    (folder / "transforms").mkdir()
    np.save(folder / "transforms" / "v2.npy", np.vstack([w, np.zeros((1, 6), np.float32)]))
    s.upgrade(str(folder))
    # a v2 query equal to the transformed stored vector 5 finds it
    res = Service.open(tmp_path / "g").query(vectors=x[5:6] @ w, k=1)
    assert res[0].ids == ["5"] and res[0].scores[0] == pytest.approx(1.0, abs=1e-5)
    # v2 rows are stored in v2's own space and found beside the mapped v1 rows
    s.add_vectors(vectors(1, 6, seed=5), ids=["new"], model="v2")
    assert Service.open(tmp_path / "g").query(vectors=vectors(1, 6, seed=5), k=1)[0].ids == ["new"]
    # a client still on v1 cannot read v2's rows (a transform has no inverse): refused, naming the rule
    with pytest.raises(CompatretError, match="no inverse"):
        Service.open(tmp_path / "g").query(vectors=x[:1], model="v1", k=3)


def test_mixed_version_gallery_ranks_both_versions(tmp_path):
    """v1 rows (8-d) and v2 rows (12-d, prefix(8)) in one gallery, one merged ranking."""
    v1 = ModelVersion("v1", 8)
    v2 = ModelVersion("v2", 12, parent=v1, compat=Compat.prefix(8), method="bt2")
    s = Service.create(tmp_path / "g", model=str(model_folder(tmp_path, v1)))
    base = vectors(40, 12, seed=3)
    s.add_vectors(base[:20, :8], ids=[f"a{i}" for i in range(20)])
    s.upgrade(str(model_folder(tmp_path, v2)))
    s.add_vectors(base[20:], ids=[f"b{i}" for i in range(20)], model="v2")
    s = Service.open(tmp_path / "g")
    assert s.rows_by_version() == {"v1": 20, "v2": 20}
    assert (tmp_path / "g").exists() and "vector_12" in s.gallery.table.schema.names
    for i in (3, 25):  # the query equal to a row's full v2 vector finds it, whichever version stored it
        res = s.query(vectors=base[i : i + 1], k=40)[0]
        assert res.ids[0] == (f"a{i}" if i < 20 else f"b{i - 20}")
        assert len(res.ids) == 40 and res.scores == sorted(res.scores, reverse=True)
    # a client still on v1 reads every row through the shared 8 dims (v2's first 8 live in v1's space)
    res = s.query(vectors=base[25:26, :8], model="v1", k=40)[0]
    assert len(res.ids) == 40
    exact = {i: float(normalize(base[n : n + 1, :8])[0] @ normalize(base[25:26, :8])[0]) for n, i in
             [(n, f"a{n}" if n < 20 else f"b{n - 20}") for n in range(40)]}
    assert res.ids[0] == "b5" and res.scores[0] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(res.scores, [exact[i] for i in res.ids], atol=1e-5)
