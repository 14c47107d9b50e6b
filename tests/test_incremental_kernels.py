"""Kernels follow writes in place (cost of the write, not the gallery) and agree with a rebuild."""

from __future__ import annotations

import subprocess
import sys

import faiss
import numpy as np
import pytest

from compatret import Compat, ModelVersion
from compatret.store.gallery import Gallery
from compatret.store.history import rollback
from compatret.search.fragments import CACHE_DIR
from compatret.search.fragments import FragmentCache
from compatret.search.kernels import RERANK_MAX
from compatret.engine.service import Service
from compatret.core.transforms import normalize


def vectors(n: int, d: int, seed: int) -> np.ndarray:
    return normalize(np.random.default_rng(seed).normal(size=(n, d)))


def folder(tmp_path, version: ModelVersion):
    d = tmp_path / version.id
    d.mkdir()
    version.save(d)
    return str(d)


def found_by_own_vector(s: Service, ids: list[str], x: np.ndarray, model: str | None = None) -> float:
    """Fraction of rows returned at rank 1 when queried with their own stored vector."""
    res = s.query(vectors=x, k=1, model=model)
    return float(np.mean([r.ids[:1] == [i] for r, i in zip(res, ids)]))


@pytest.mark.parametrize("ann", ["flat", "ivf", "ivfpq", "hnsw"])
def test_kernels_follow_add_delete_upgrade_backfill(tmp_path, ann):
    v1 = ModelVersion("v1", 8)
    v2 = ModelVersion("v2", 12, parent=v1, compat=Compat.prefix(8), method="bt2")
    s = Service.create(tmp_path / "g", model=folder(tmp_path, v1), ann=ann)
    all_found = 0.97 if ann == "ivfpq" else 1.0  # 2-byte codes of 8-d noise: a row may miss the re-ranked candidates
    x = vectors(2600, 8, 0)
    ids = [f"r{i}" for i in range(2600)]
    s.add_vectors(x[:2000], ids=ids[:2000], batch_size=1000)
    assert found_by_own_vector(s, ids[:50], x[:50]) >= all_found
    kernel = s.index.kernel("v1", "auto", ann)
    trained = getattr(kernel, "trained_on", 0)

    s.add_vectors(x[2000:], ids=ids[2000:])  # a new fragment
    assert found_by_own_vector(s, ids[2000:2100], x[2000:2100]) >= all_found
    assert s.index.kernel("v1", "auto", ann) is kernel and kernel.ntotal == 2600  # updated, not rebuilt
    assert getattr(kernel, "trained_on", 0) == trained  # IVF lists not retrained for 30 % growth

    before_delete = s.gallery.latest_version()
    s.delete(ids[:100])
    gone = s.query(vectors=x[:100], k=5)
    assert not {i for r in gone for i in r.ids} & set(ids[:100])
    if ann != "hnsw":  # faiss HNSW cannot remove: it is rebuilt instead
        assert s.index.kernel("v1", "auto", ann) is kernel
    assert s.index.kernel("v1", "auto", ann).ntotal == 2500
    rollback(s.gallery, before_delete)  # the deleted rows come back, and the same kernels find them again
    assert found_by_own_vector(s, ids[:100], x[:100]) >= all_found and s.index.kernel("v1", "auto", ann).ntotal == 2600
    s.delete(ids[:100])

    s.upgrade(folder(tmp_path, v2))  # metadata only: the kernel stays as it is
    assert s.index.kernel("v1", "auto", ann).ntotal == 2500
    new = vectors(200, 12, 1)
    new[:, :8] = x[100:300]  # the backfilled rows keep their old space in the first 8 dims
    new = normalize(new)
    with s.gallery.writing("test backfill"):
        s.gallery.update_vectors(ids[100:300], new, v2)
    assert s.rows_by_version() == {"v1": 2300, "v2": 200}
    assert s.index.kernel("v1", "auto", ann).ntotal == 2300
    assert found_by_own_vector(s, ids[100:200], new[:100]) >= all_found
    assert found_by_own_vector(s, ids[300:400], np.hstack([x[300:400], np.zeros((100, 4), np.float32)])) >= all_found

    # the same gallery searched by kernels rebuilt from scratch gives the same answers
    q = vectors(40, 12, 2)
    kept = s.query(vectors=q, k=10)
    FragmentCache(tmp_path / "g").clear()
    rebuilt = Service.open(tmp_path / "g").query(vectors=q, k=10)
    if ann == "flat":
        assert [r.ids for r in kept] == [r.ids for r in rebuilt]
        np.testing.assert_allclose([r.scores for r in kept], [r.scores for r in rebuilt], atol=1e-5)
    else:  # approximate: the same rows are there (each found by its own vector)
        fresh = Service.open(tmp_path / "g")
        assert found_by_own_vector(fresh, ids[300:2600:7], np.hstack([x[300:2600:7], np.zeros((329, 4), np.float32)])) >= all_found


@pytest.mark.processes
def test_ann_kernel_is_persisted_and_follows_another_process(tmp_path):
    s = Service.create(tmp_path / "g", dim=16, version_id="v1", ann="ivf")
    x = vectors(3000, 16, 0)
    s.add_vectors(x, ids=[f"r{i}" for i in range(3000)])
    s.query(vectors=x[:1], k=1)
    saved = list((tmp_path / "g" / CACHE_DIR).glob("kernel-*/index-*.faiss"))
    assert len(saved) == 1
    trained = s.index.kernel("v1", "auto", "ivf").trained_on  # type: ignore[attr-defined]
    # another process adds rows; a new reader loads the saved kernel and adds only those rows
    np.save(tmp_path / "late.npy", vectors(5, 16, 9))
    np.save(tmp_path / "late_ids.npy", np.array([f"late{i}" for i in range(5)]))
    done = subprocess.run([sys.executable, "-m", "compatret", "index", "add", str(tmp_path / "g"), "--vectors", str(tmp_path / "late.npy"),
                           "--ids", str(tmp_path / "late_ids.npy")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    reader = Service.open(tmp_path / "g")
    assert found_by_own_vector(reader, [f"late{i}" for i in range(5)], vectors(5, 16, 9)) == 1.0
    loaded = reader.index.kernel("v1", "auto", "ivf")
    assert loaded.trained_on == trained and loaded.ntotal == 3005  # type: ignore[attr-defined]


def test_transform_plan_maps_each_row_once(tmp_path):
    v1 = ModelVersion("v1", 6)
    s = Service.create(tmp_path / "g", model=folder(tmp_path, v1))
    x = vectors(500, 6, 0)
    s.add_vectors(x, ids=[str(i) for i in range(500)])
    w = np.random.default_rng(1).normal(size=(6, 6)).astype(np.float32)
    v2 = ModelVersion("v2", 6, parent=v1, compat=Compat.transform("transforms/v2.npy"), method="fct")
    d = tmp_path / "v2"
    d.mkdir()
    v2.save(d)
    (d / "transforms").mkdir()
    np.save(d / "transforms" / "v2.npy", np.vstack([w, np.zeros((1, 6), np.float32)]))
    s.upgrade(str(d))
    assert s.query(vectors=x[7:8] @ w, k=1)[0].ids == ["7"]
    mapped = [st.kernel for key, st in s.index._kernels.items() if key[3]]
    s.add_vectors(vectors(3, 6, 5), ids=["a", "b", "c"])  # v1 rows: mapped on arrival, nothing else re-mapped
    assert s.query(vectors=vectors(3, 6, 5)[:1] @ w, k=1)[0].ids == ["a"]
    assert [st.kernel for key, st in s.index._kernels.items() if key[3]] == mapped and mapped[0].ntotal == 503
    assert Gallery.open(tmp_path / "g").count() == 503


def test_vectors_stream_in_blocks_all_or_nothing_with_an_id_index(tmp_path):
    """A memory-mapped .npy is checked block by block before anything is written; ids get a BTREE index."""
    s = Service.create(tmp_path / "g", dim=8, version_id="v1")
    x = vectors(2500, 8, 0)
    x[2400, 3] = np.nan  # in the last block: found before the first block is written
    np.save(tmp_path / "x.npy", x)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    before = s.gallery.latest_version()
    with pytest.raises(Exception, match="NaN"):
        s.add_vectors(mapped, batch_size=1000)
    assert s.gallery.latest_version() == before and s.gallery.count() == 0
    x[2400, 3] = 0.5
    np.save(tmp_path / "x.npy", x)
    assert s.add_vectors(np.load(tmp_path / "x.npy", mmap_mode="r"), batch_size=1000) == 2500
    assert "id_idx" in {i.name for i in s.gallery.table.list_indices()}
    ids = s.gallery.scan(["id"]).column("id").to_pylist()
    assert len(set(ids)) == 2500 and s.gallery.existing(ids[:3] + ["nope"]) == ids[:3]


@pytest.mark.processes
def test_parquet_vectors_from_another_store(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x = vectors(300, 8, 3)
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(300)], "vector": x.tolist()}), tmp_path / "v.parquet")
    pq.write_table(pa.table({"emb": x.tolist()}), tmp_path / "bad.parquet")
    run = [sys.executable, "-m", "compatret", "index"]
    assert subprocess.run(run + ["create", str(tmp_path / "g"), "--dim", "8", "--version-id", "v1"], capture_output=True).returncode == 0
    bad = subprocess.run(run + ["add", str(tmp_path / "g"), "--vectors", str(tmp_path / "bad.parquet")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no 'vector' column" in bad.stderr
    good = subprocess.run(run + ["add", str(tmp_path / "g"), "--vectors", str(tmp_path / "v.parquet"), "--json"], capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert Service.open(tmp_path / "g").query(vectors=x[42:43], k=1)[0].ids == ["p42"]


def test_ivfpq_gallery_scores_are_exact_on_the_stored_vectors(tmp_path):
    """Through the service, an ivfpq gallery's hits carry exact scores (the re-rank ran on the
    stored rows the hit ids name), and it finds what exact search finds."""
    s = Service.create(tmp_path / "g", dim=32, version_id="v1", ann="ivfpq")
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(40, 32))
    x = normalize(centers[rng.integers(0, 40, 6000)] + 0.4 * rng.normal(size=(6000, 32)))
    s.add_vectors(x, ids=[str(i) for i in range(6000)], batch_size=2000)
    q = normalize(centers[rng.integers(0, 40, 50)] + 0.4 * rng.normal(size=(50, 32)))
    res = s.query(vectors=q, k=10)
    for r, qv in zip(res, q):
        np.testing.assert_allclose(r.scores, x[[int(i) for i in r.ids]] @ qv, atol=1e-5)
    exact = np.argsort(-(q @ x.T), axis=1)[:, :10]
    recall = np.mean([len({int(i) for i in r.ids} & set(e.tolist())) / 10 for r, e in zip(res, exact)])
    assert recall >= 0.95


def test_a_kernel_follows_compaction_and_deletes_from_another_handle_as_a_rebuild_would(tmp_path):
    """Fragments compacted away (their label ranges removed) and fragments whose deletions this
    handle never read (removed by range, live rows added again): the kernel kept in place answers
    as one built afresh, every row ranked."""
    x, ids = vectors(900, 8, 3), [f"r{i}" for i in range(900)]
    s = Service.create(tmp_path / "g", dim=8, version_id="v1")
    for b in range(3):
        s.add_vectors(x[b * 300 : (b + 1) * 300], ids=ids[b * 300 : (b + 1) * 300])
    q = vectors(5, 8, 4)
    s.query(vectors=q, k=900)
    kernel = s.index.kernel("v1", "auto", "flat")
    Service.open(tmp_path / "g").delete(ids[10:20] + ids[310:320])
    after_delete = s.query(vectors=q, k=900)
    with s.gallery.writing("test compaction"):
        s.gallery.compact()
    s.delete(ids[600:610])
    after_compaction = s.query(vectors=q, k=900)
    assert s.index.kernel("v1", "auto", "flat") is kernel  # followed, not rebuilt
    FragmentCache(tmp_path / "g").clear()
    fresh = Service.open(tmp_path / "g").query(vectors=q, k=900)
    assert [len(r.ids) for r in after_compaction] == [870] * 5
    assert [r.ids for r in after_compaction] == [r.ids for r in fresh]
    assert [set(r.ids) for r in after_delete] == [set(r.ids) | set(ids[600:610]) for r in fresh]


def test_an_ivf_kernel_is_retrained_once_its_rows_grow_past_four_times_its_training_rows(tmp_path):
    x, ids = vectors(5000, 8, 5), [f"r{i}" for i in range(5000)]
    s = Service.create(tmp_path / "g", dim=8, version_id="v1", ann="ivf")
    s.add_vectors(x[:1000], ids=ids[:1000])
    s.query(vectors=x[:1], k=1)
    kernel = s.index.kernel("v1", "auto", "ivf")
    assert kernel.trained_on == 1000  # type: ignore[attr-defined]
    s.add_vectors(x[1000:4000], ids=ids[1000:4000])  # 4 times: kept
    s.query(vectors=x[:1], k=1)
    assert s.index.kernel("v1", "auto", "ivf") is kernel
    s.add_vectors(x[4000:4001], ids=ids[4000:4001])  # past 4 times: trained again on all its rows
    assert s.query(vectors=x[4000:4001], k=1)[0].ids == ["r4000"]
    again = s.index.kernel("v1", "auto", "ivf")
    assert again is not kernel and again.trained_on == 4001  # type: ignore[attr-defined]


def test_a_new_handle_loads_the_saved_ann_kernel_and_adds_only_the_rows_written_since(tmp_path):
    """The in-process twin of test_ann_kernel_is_persisted_and_follows_another_process: a rebuild
    would train on all 3,005 rows."""
    x = vectors(3005, 16, 0)
    s = Service.create(tmp_path / "g", dim=16, version_id="v1", ann="ivf")
    s.add_vectors(x[:3000], ids=[f"r{i}" for i in range(3000)])
    s.query(vectors=x[:1], k=1)
    Service.open(tmp_path / "g").add_vectors(x[3000:], ids=[f"late{i}" for i in range(5)])
    reader = Service.open(tmp_path / "g")
    assert found_by_own_vector(reader, [f"late{i}" for i in range(5)], x[3000:]) == 1.0
    loaded = reader.index.kernel("v1", "auto", "ivf")
    assert loaded.trained_on == 3000 and loaded.ntotal == 3005  # type: ignore[attr-defined]


def test_an_ivfpq_rerank_scores_rows_through_the_fitted_map(tmp_path):
    """v1 rows read by v2 through a linear map: the re-rank scores each candidate on its mapped
    stored vector, as an exact kernel over the mapped rows scores it."""
    v1 = ModelVersion("v1", 16)
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(30, 16))
    x = normalize(centers[rng.integers(0, 30, 4000)] + 0.4 * rng.normal(size=(4000, 16)))
    w = rng.normal(size=(16, 16)).astype(np.float32)
    v2 = ModelVersion("v2", 16, parent=v1, compat=Compat.transform("transforms/v2.npy"), method="fct")
    d = tmp_path / "v2"
    (d / "transforms").mkdir(parents=True)
    v2.save(d)
    np.save(d / "transforms" / "v2.npy", np.vstack([w, np.zeros((1, 16), np.float32)]))
    answers = {}
    for ann in ("flat", "ivfpq"):
        root = tmp_path / ann
        root.mkdir()
        s = Service.create(root / "g", model=folder(root, v1), ann=ann)
        s.add_vectors(x, ids=[str(i) for i in range(4000)], batch_size=2000)
        s.upgrade(str(d))
        reader = Service.open(root / "g")
        answers[ann] = reader.query(vectors=normalize(x[:20] @ w), k=5)
    (mapped,) = [st.kernel for key, st in reader.index._kernels.items() if key[3]]
    ivf = faiss.extract_index_ivf(mapped.index)  # type: ignore[attr-defined]
    # calibrated on the mapped rows (clustered: far from the limits); on unmapped ones it would hit both
    assert mapped.rerank < RERANK_MAX and ivf.nprobe < ivf.nlist  # type: ignore[attr-defined]
    for approx, exact in zip(answers["ivfpq"], answers["flat"]):
        by_id = dict(zip(exact.ids, exact.scores))
        assert approx.ids[0] == exact.ids[0]
        np.testing.assert_allclose(approx.scores[0], by_id[approx.ids[0]], atol=1e-5)


# ---- the view's own promises, one test each (found by mutation testing of search/view.py) ----


def batches(tmp_path, sizes: list[int], ann: str = "flat", seed: int = 3, **create) -> tuple[Service, np.ndarray, list[str]]:
    """A gallery written in one add per size (one fragment each)."""
    x = vectors(sum(sizes), 8, seed)
    ids = [f"r{i}" for i in range(len(x))]
    s = Service.create(tmp_path / "g", ann=ann, **(create or {"dim": 8, "version_id": "v1"}))
    start = 0
    for n in sizes:
        s.add_vectors(x[start : start + n], ids=ids[start : start + n])
        start += n
    return s, x, ids


def transform_upgraded(tmp_path, sizes: list[int], ann: str = "flat") -> tuple[Service, np.ndarray, list[str], np.ndarray]:
    """v1 rows read by the serving model v2 through a linear map w (a mapped kernel)."""
    v1 = ModelVersion("v1", 8)
    s, x, ids = batches(tmp_path, sizes, ann, model=folder(tmp_path, v1))
    w = np.random.default_rng(1).normal(size=(8, 8)).astype(np.float32)
    v2 = ModelVersion("v2", 8, parent=v1, compat=Compat.transform("transforms/v2.npy"), method="fct")
    d = tmp_path / "v2"
    (d / "transforms").mkdir(parents=True)
    v2.save(d)
    np.save(d / "transforms" / "v2.npy", np.vstack([w, np.zeros((1, 8), np.float32)]))
    s.upgrade(str(d))
    return s, x, ids, w


def test_a_view_is_exactly_the_table_version_it_was_loaded_at(tmp_path):
    """Every table version, read cold: its rows, and each fragment's deletion state as the table has it."""
    from compatret.search.fragments import deletion_of, fragment_key
    from compatret.search.view import SearchIndex

    s, _, ids = batches(tmp_path, [30, 40, 50])
    s.delete(ids[:3] + ids[35:37])
    g = Gallery.open(tmp_path / "g")
    assert SearchIndex.load(g).table_version == g.version == g.latest_version()
    for v in range(1, g.latest_version() + 1):
        FragmentCache(tmp_path / "g").clear()
        view = SearchIndex.load(g, v)
        fragments = g.dataset(v).get_fragments()
        assert view.table_version == v and view.size == g.dataset(v).count_rows()
        assert {k: f.deletion for k, f in view.fragments.items()} == {fragment_key(f): deletion_of(f) for f in fragments}
    assert SearchIndex.load(g, 4).size == 30 and SearchIndex.load(g).size == 115


def test_a_view_moved_forward_reuses_unchanged_fragments_and_reads_no_rows_for_a_delete(tmp_path):
    from compatret.search.view import SearchIndex

    batches(tmp_path, [30, 40])
    old = SearchIndex.load(Gallery.open(tmp_path / "g"))
    Service.open(tmp_path / "g").delete(["r0"])
    g = Gallery.open(tmp_path / "g")
    new = old.advanced(g, g.version)
    changed = [k for k in new.fragments if new.fragments[k].deletion != old.fragments[k].deletion]
    assert len(changed) == 1 and new.size == 69
    for k, f in new.fragments.items():
        if k in changed:  # the same rows read, fewer alive: followed from the deletion file
            assert f.read is old.fragments[k].read and f is not old.fragments[k]
        else:
            assert f is old.fragments[k]
    assert old.retired and not new.retired  # a query holding the old view looks again


@pytest.mark.parametrize("ann", ["flat", "ivf"])
def test_two_queries_racing_for_a_missing_kernel_build_it_once(tmp_path, ann):
    import threading
    import time

    s, _, _ = batches(tmp_path, [400], ann=ann)
    view, got = s.index, []
    with view._building:  # both threads find no kernel and wait for the lock
        threads = [threading.Thread(target=lambda: got.append(view.kernel("v1", "auto", ann))) for _ in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.3)
    for t in threads:
        t.join()
    assert len(got) == 2 and got[0] is got[1] and len(view._kernels) == 1


def test_flat_kernels_are_never_written_to_disk(tmp_path):
    """A flat kernel costs as much to read as to build: only ANN kernels are saved."""
    s, x, ids = batches(tmp_path, [100])
    s.query(vectors=x[:1], k=1)
    s.add_vectors(vectors(200, 8, 9), ids=[f"n{i}" for i in range(200)])  # two thirds of the rows changed
    s.delete(ids[:50])
    assert s.query(vectors=x[60:61], k=1)[0].ids == ["r60"]
    assert s.index.kernel("v1", "auto", "flat").ntotal == 250
    assert not list((tmp_path / "g" / CACHE_DIR).glob("kernel-*"))


def test_a_saved_ann_kernel_is_rewritten_once_more_than_a_tenth_of_its_rows_changed(tmp_path):
    from compatret.search.kernel_files import _load_kernel

    s, x, _ = batches(tmp_path, [2700], ann="ivf")
    s.query(vectors=x[:1], k=1)
    (key,) = s.index._kernels

    def saved() -> int:
        return _load_kernel(tmp_path / "g", key).kernel.ntotal  # type: ignore[union-attr]

    more = vectors(310, 8, 11)
    steps = [(250, 2700), (50, 2700), (10, 3010)]  # dirty 250 of 2,950; exactly 300 of 3,000 (not more); 310 of 3,010
    start = 0
    for n, expected in steps:
        s.add_vectors(more[start : start + n], ids=[f"m{i}" for i in range(start, start + n)])
        start += n
        s.query(vectors=x[:1], k=1)
        assert saved() == expected
    assert s.index.kernel("v1", "auto", "ivf").ntotal == 3010


def test_a_kernel_counts_only_the_rows_a_write_changed_and_keeps_its_map(tmp_path):
    """Delete 3, bring them back by a rollback, add 4: the mapped kernel took 10 row changes
    (not a fragment re-read), and every row it took in was mapped into the serving space."""
    s, x, ids, w = transform_upgraded(tmp_path, [100, 100, 100])

    def mapped_query(rows: np.ndarray) -> list:
        return s.query(vectors=normalize(rows @ w), k=1)

    mapped_query(x[:1])
    (key,) = [k for k in s.index._kernels if k[3]]
    state = s.index._kernels[key]
    before_delete = s.gallery.latest_version()
    s.delete(ids[10:13])
    mapped_query(x[:1])
    assert state.dirty == 3
    rollback(s.gallery, before_delete)
    back = mapped_query(x[10:13])
    assert [r.ids for r in back] == [["r10"], ["r11"], ["r12"]] and state.dirty == 6
    extra = vectors(4, 8, 12)
    s.add_vectors(extra, ids=[f"e{i}" for i in range(4)])
    found = mapped_query(extra)
    assert [r.ids for r in found] == [[f"e{i}"] for i in range(4)] and state.dirty == 10
    assert all(r.scores[0] == pytest.approx(1.0, abs=1e-5) for r in back + found)
    assert s.index._kernels[key] is state


def test_a_loaded_kernel_re_reads_a_fragment_deleted_from_elsewhere_mapped_and_only_that_one(tmp_path):
    """A saved IVF kernel over mapped rows, loaded by a new handle after another deleted from
    fragment 0: fragment 0's label range is removed and its live rows added again through the
    map; fragment 1's rows stay."""
    s, x, ids, w = transform_upgraded(tmp_path, [1500, 1500], ann="ivf")
    s.query(vectors=normalize(x[:1] @ w), k=1)
    Service.open(tmp_path / "g").delete(ids[:5])
    reader = Service.open(tmp_path / "g")
    for rows in (range(5, 1500, 30), range(1500, 3000, 30)):  # fragment 0, fragment 1
        picked = list(rows)
        assert found_by_own_vector(reader, [ids[i] for i in picked], normalize(x[picked] @ w)) >= 0.95
    (key,) = [k for k in reader.index._kernels if k[3]]
    assert reader.index._kernels[key].kernel.ntotal == 2995


def test_a_numpy_kernel_follows_writes_in_place(tmp_path):
    batches(tmp_path, [40])
    s = Service.open(tmp_path / "g", kernel="numpy")
    s.query(vectors=vectors(1, 8, 0), k=1)
    kernel = s.index.kernel("v1", "numpy", "flat")
    extra = vectors(3, 8, 13)
    s.add_vectors(extra, ids=["a", "b", "c"])
    assert [r.ids for r in s.query(vectors=extra, k=1)] == [["a"], ["b"], ["c"]]
    assert s.index.kernel("v1", "numpy", "flat") is kernel and kernel.ntotal == 43
