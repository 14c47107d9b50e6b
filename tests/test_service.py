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


# ---- what an upgrade checks before its one commit (found by mutation testing of engine/upgrade.py) ----


def with_transforms(tmp_path, version: ModelVersion, files: dict[str, np.ndarray]):
    """A model folder holding `files` (name -> weight matrix, saved with a zero bias row)."""
    d = model_folder(tmp_path, version)
    for name, w in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        np.save(d / name, np.vstack([w, np.zeros((1, w.shape[1]), np.float32)]))
    return d


def unchanged(path, before) -> None:
    after = Service.open(path)
    assert after.meta == before.meta and after.gallery.latest_version() == before.gallery.latest_version()


def test_a_refused_upgrade_names_the_rows_it_cannot_read_and_the_serving_model(tmp_path):
    v1 = ModelVersion("v1", 8)
    s = Service.create(tmp_path / "g", model=str(model_folder(tmp_path, v1)))
    with pytest.raises(CompatretError) as refused:
        s.upgrade(str(model_folder(tmp_path, ModelVersion("stranger", 8))))
    first = "model 'stranger' cannot read this gallery's rows ('v1' vectors): its lineage stranger does not reach 'v1'"
    assert str(refused.value).split(";")[0] == first  # then how to adapt
    s.upgrade(str(model_folder(tmp_path, ModelVersion("v2", 8, parent=v1, compat=Compat.prefix(4), method="bt2"))))
    other = ModelVersion("x", 8, parent=ModelVersion("v2", 8), method="bt2")  # another v2, not v1's child
    with pytest.raises(CompatretError) as refused:
        s.upgrade(str(model_folder(tmp_path, other)))
    assert str(refused.value).split(";")[0] == (
        "model 'x' cannot read this gallery's rows ('v1' vectors, serving 'v2'): its lineage x -> v2 does not reach 'v1'"
    )


def test_an_upgrade_gate_must_have_measured_the_model_now_serving_and_is_recorded(tmp_path):
    v1 = ModelVersion("v1", 8)
    v2 = ModelVersion("v2", 8, parent=v1, compat=Compat.prefix(4), method="bt2")
    v3 = ModelVersion("v3", 8, parent=v2, compat=Compat.prefix(4), method="bt2")
    s = Service.create(tmp_path / "g", model=str(model_folder(tmp_path, v1)))
    before = Service.open(tmp_path / "g")
    with pytest.raises(CompatretError, match="^the gate compared against 'v0', but the gallery now serves 'v1': run it again$"):
        s.upgrade(str(model_folder(tmp_path, v2)), gate={"serving": "v0", "queries": 3})
    unchanged(tmp_path / "g", before)
    gate = {"serving": "v1", "queries": 3}
    s.upgrade(str(tmp_path / "v2"), gate=gate)
    s.upgrade(str(model_folder(tmp_path, v3)))  # no gate: none recorded
    upgrades = [e for e in Service.open(tmp_path / "g").meta.history if e["event"] == "upgrade"]
    assert [{k: v for k, v in e.items() if k != "time"} for e in upgrades] == [
        {"event": "upgrade", "model": "v2", "previous": "v1", "gate": gate},
        {"event": "upgrade", "model": "v3", "previous": "v2"},
    ]


def test_an_upgrade_checks_its_transform_files_before_it_copies_any(tmp_path):
    """Outside transforms/, missing, or a link out of the model folder or onto one in the gallery:
    refused with one line, nothing copied, nothing committed; valid ones upgrade twice in a row."""
    w = np.random.default_rng(2).normal(size=(8, 8)).astype(np.float32)
    v1 = ModelVersion("v1", 8)
    s = Service.create(tmp_path / "g", model=str(model_folder(tmp_path, v1)))
    x = vectors(20, 8)
    s.add_vectors(x, ids=[str(i) for i in range(20)])
    before = Service.open(tmp_path / "g")
    outside = tmp_path / "outside.npy"
    np.save(outside, np.ones((9, 8), np.float32))

    def child(name: str, path: str, parent: ModelVersion = v1) -> ModelVersion:
        return ModelVersion(name, 8, parent=parent, compat=Compat.transform(path), method="fct")

    cases = {
        "stray": (child("stray", "maps/v2.npy"), {"maps/v2.npy": w}, "model 'stray': transform files live in transforms/, not 'maps/v2.npy'"),
        "missing": (child("missing", "transforms/v2.npy"), {}, "model 'missing' lacks its transform file "),
        "linked": (child("linked", "transforms/v2.npy"), {}, "transform file 'transforms/v2.npy' leads out of its folder"),
    }
    for name, (version, files, message) in cases.items():
        (tmp_path / name).mkdir()
        folder = with_transforms(tmp_path / name, version, files)
        if name == "linked":
            (folder / "transforms").mkdir()
            (folder / "transforms" / "v2.npy").symlink_to(outside)
        with pytest.raises(CompatretError) as refused:
            s.upgrade(str(folder))
        assert str(refused.value).startswith(message), refused.value
        unchanged(tmp_path / "g", before)
        assert sorted(p.name for p in (tmp_path / "g").iterdir()) == sorted(p.name for p in before.gallery.path.iterdir())

    v2 = child("v2", "transforms/v2.npy")
    s.upgrade(str(with_transforms(tmp_path, v2, {"transforms/v2.npy": w})))
    v3 = child("v3", "transforms/v3.npy", parent=v2)
    s.upgrade(str(with_transforms(tmp_path, v3, {"transforms/v2.npy": w, "transforms/v3.npy": w.T.copy()})))  # transforms/ exists now
    assert Service.open(tmp_path / "g").query(vectors=x[4:5] @ w @ w.T, k=1)[0].ids == ["4"]

    g2 = Service.create(tmp_path / "g2", model=str(tmp_path / "v2"))  # v2's own transform is a link out of this gallery
    (tmp_path / "g2" / "transforms").mkdir(exist_ok=True)
    (tmp_path / "g2" / "transforms" / "v2.npy").unlink(missing_ok=True)
    (tmp_path / "g2" / "transforms" / "v2.npy").symlink_to(outside)
    with pytest.raises(CompatretError, match="^transform file 'transforms/v2.npy' leads out of its folder$"):
        g2.upgrade(str(tmp_path / "v3"))
    assert np.array_equal(np.load(outside), np.ones((9, 8), np.float32)) and Service.open(tmp_path / "g2").meta.serving.id == "v2"


class ToyEndpoint:
    """An OpenAI-compatible embeddings server on loopback: each text's vector drawn from a seed
    made of the text (and of `model`, which a test changes to play a provider swapping models)."""

    def __init__(self) -> None:
        import hashlib
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.model = "toy-1"
        toy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802  (the http.server name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                rows = [
                    {"object": "embedding", "index": i,
                     "embedding": np.random.default_rng(int(hashlib.sha256(f"{toy.model}|{t}".encode()).hexdigest()[:8], 16)).normal(size=8).tolist()}
                    for i, t in enumerate(body["input"])
                ]  # fmt: skip
                out = json.dumps({"object": "list", "data": rows, "model": body["model"], "usage": {"prompt_tokens": 1, "total_tokens": 1}})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def toy_model(tmp_path):
    """(the toy endpoint, the folder of the text model registered on it as 'toy', dim 8)."""
    from compatret.encoders.remote import EndpointSettings, register

    toy = ToyEndpoint()
    register(tmp_path / "toy", "toy", EndpointSettings(endpoint=toy.url, model="toy", dim=8, max_retries=0))
    yield toy, str(tmp_path / "toy")
    toy.close()


def test_an_upgrade_to_a_model_behind_an_endpoint_is_refused_once_the_endpoint_serves_another(tmp_path, toy_model):
    toy, folder = toy_model
    s = Service.create(tmp_path / "g", model=folder)
    s.add_items([{"id": "a", "text": "a first text"}], progress=False)
    s.upgrade(folder)  # the registered model: allowed
    toy.model = "toy-2"
    before = Service.open(tmp_path / "g")
    with pytest.raises(CompatretError) as refused:
        s.upgrade(folder)
    assert "no longer returns the registered model's vectors" in str(refused.value)
    assert "refusing to upgrade to it;" in str(refused.value)
    unchanged(tmp_path / "g", before)
