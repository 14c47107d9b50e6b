"""A sharded gallery on Ray Serve, on a real local Ray cluster: the HTTP API of `compatret serve`
in front of one deployment per shard, exact against one gallery, a replica killed under load."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import numpy as np
import pytest

from compatret.engine.service import Service
from compatret.engine.sharded import ShardedService
from compatret.server.auth import ApiKeys
from compatret.testing.ports import free_port
from test_sharded import folders
from test_service import vectors

ray = pytest.importorskip("ray")
WRITE, READ = "w-key-0123456789", "r-key-0123456789"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from ray import serve

    from compatret.engine.ray_cluster import RayOptions, connect
    from compatret.server.ray_serve import ServeOptions, start

    root = tmp_path_factory.mktemp("ray_serve")
    v1, _ = folders(root)
    base = vectors(400, 8, seed=4)
    ids = [f"r{i}" for i in range(400)]
    one = Service.create(root / "one", model=v1)
    one.add_vectors(base, ids=ids)
    sharded = ShardedService.create(root / "g", 3, model=v1)
    sharded.add_vectors(base, ids=ids)
    try:
        connect(RayOptions())
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"Ray cannot start here: {exc}")
    keys = ApiKeys.load(environ={"COMPATRET_API_KEY": WRITE, "COMPATRET_READ_API_KEY": READ})
    url = start(str(root / "g"), "127.0.0.1", free_port(), ServeOptions(replicas=1, cpus_per_replica=0.25, deadline_s=20.0),
                {"keys": keys})
    yield {"url": url, "one": one, "root": root, "base": base}
    serve.shutdown()
    ray.shutdown()


def client(served, key: str = READ) -> httpx.Client:
    return httpx.Client(base_url=served["url"], timeout=60, headers={"Authorization": f"Bearer {key}"})


def test_the_fan_out_answers_exactly_as_one_gallery_with_the_same_api(served):
    c = client(served)
    assert "/query" in c.get("/openapi.json").json()["paths"]
    assert httpx.post(served["url"] + "/query", json={"vectors": [[1.0] * 8], "k": 3}).status_code == 401  # keys and scopes
    assert c.post("/items/delete", json={"ids": ["r1"]}).status_code == 403
    assert c.post("/query", json={"vectors": [[1.0, 2.0]], "k": 5}).status_code == 400  # validation, one line
    q = vectors(8, 8, seed=31)
    got = c.post("/query", json={"vectors": q.tolist(), "k": 10}).json()["results"]
    want = served["one"].query(vectors=q, k=10)
    for g, w in zip(got, want):
        assert g["ids"] == w.ids and g["snapshot"] == 1
        np.testing.assert_allclose(g["scores"], w.scores, atol=1e-5)
    health = c.get("/health").json()
    assert health["rows"] == 400 and health["table_version"] == 1


def _replica_pids(i: int) -> list[int]:
    """The process of shard i's one replica, asked through its deployment (none while it is down)."""
    from ray import serve

    from compatret.server.ray_serve import shard_app

    try:
        return [serve.get_deployment_handle("shard", app_name=shard_app(i)).pid.remote().result(timeout_s=5)]
    except Exception:  # noqa: BLE001  dead, or not replaced yet
        return []


def test_a_killed_replica_is_replaced_and_no_query_gets_a_wrong_or_partial_answer(served):
    c = client(served)
    q = vectors(1, 8, seed=77)
    want = served["one"].query(vectors=q, k=10)[0]
    codes: list[int] = []
    wrong: list[object] = []
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set():
            r = c.post("/query", json={"vectors": q.tolist(), "k": 10})
            codes.append(r.status_code)
            if r.status_code == 200 and r.json()["results"][0]["ids"] != want.ids:
                wrong.append(r.json())

    before = _replica_pids(1)
    assert len(before) == 1, before
    t = threading.Thread(target=ask)
    t.start()
    while len(codes) < 3:  # under load before the kill
        time.sleep(0.1)
    os.kill(before[0], signal.SIGKILL)
    killed_at = len(codes)
    deadline = time.time() + 120
    while time.time() < deadline and not (_replica_pids(1) and _replica_pids(1) != before):
        time.sleep(0.5)
    replaced_at = len(codes)
    while time.time() < deadline and len(codes) < replaced_at + 3:  # and under load after it
        time.sleep(0.1)
    stop.set()
    t.join()
    after = _replica_pids(1)
    assert after and after != before, "Serve did not replace the killed replica"
    assert not wrong, wrong[:1]
    assert set(codes) <= {200, 503}, sorted(set(codes))  # a 503 names the shard; never a wrong or partial 200
    assert codes[killed_at:].count(200) >= 3 and codes[-1] == 200


def test_add_and_backfill_with_the_ray_engine_go_shard_by_shard(tmp_path, digit_models):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from compatret.cli.main import main

    items = digit_models["items"][:60]
    pq.write_table(pa.table({"id": [it["id"] for it in items], "image": [it["image"] for it in items],
                             "metadata": [json.dumps(it["metadata"]) for it in items]}), tmp_path / "items.parquet")  # fmt: skip
    g = tmp_path / "g"
    ShardedService.create(g, 3, model=digit_models["v1"])

    def cli(*args):
        res = CliRunner().invoke(main, [str(a) for a in args])
        assert res.exit_code == 0, res.stderr
        return json.loads(res.stdout)

    ray_engine = ("--engine", "ray", "--workers", "1")
    assert cli("index", "add", g, "--items", tmp_path / "items.parquet", *ray_engine, "--json")["added"] == 60
    assert cli("index", "add", g, "--items", tmp_path / "items.parquet", *ray_engine, "--json")["added"] == 0  # a rerun: stored
    local = Service.create(tmp_path / "one", model=digit_models["v1"])
    local.add_items(items, progress=False)
    sharded = ShardedService.open(g)
    assert sharded.count() == 60 and all(s.count() > 5 for s in sharded.shards)
    want = local.gallery.vectors_by_id()
    got = {i: r for s in sharded.shards for i, r in s.gallery.vectors_by_id().items()}
    assert set(got) == set(want)
    for i, (version, vec) in want.items():
        assert got[i][0] == version and np.allclose(got[i][1], vec, atol=1e-5)
    cli("index", "upgrade", g, "--model", digit_models["v2"], "--json")
    report = cli("index", "backfill", g, *ray_engine, "--json")
    assert report["done"] == 60 and report["remaining"] == 0
    assert ShardedService.open(g).rows_by_version() == {"v2": 60}


def test_a_shard_past_its_deadline_makes_the_query_a_503_naming_it(served):
    from fastapi.testclient import TestClient
    from ray import serve

    from compatret.core.errors import Unavailable
    from compatret.server.app import create_app
    from compatret.server.ray_serve import FannedOut, ServeOptions, shard_app

    root = served["root"] / "g"
    handles = [serve.get_deployment_handle("shard", app_name=shard_app(i)) for i in range(3)]
    hurried = FannedOut(ShardedService.open(root), handles, ServeOptions(deadline_s=1e-6))
    with pytest.raises(Unavailable, match=r"^shard 0 did not answer within 1e-06 s: no partial answer is given$"):
        hurried.query(vectors=vectors(1, 8, seed=5), k=3)
    r = TestClient(create_app(root, service=hurried, fingerprint_minutes=0)).post("/query", json={"vectors": [[1.0] * 8], "k": 3})
    assert r.status_code == 503 and r.json()["detail"].startswith("shard 0 did not answer within")
    patient = FannedOut(ShardedService.open(root), handles, ServeOptions(deadline_s=30))
    assert patient.query(vectors=vectors(1, 8, seed=5), k=3)[0].ids == served["one"].query(vectors=vectors(1, 8, seed=5), k=3)[0].ids
