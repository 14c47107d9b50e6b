"""The HTTP service on loopback (two worker processes), with a real client, while a backfill and an upgrade run."""

from __future__ import annotations

import os

import httpx
import numpy as np
import pytest

from compatret.engine.service import Service
from compatret.testing.serve import serving


@pytest.fixture()
def server(tmp_path, digit_models):
    s = Service.create(tmp_path / "g", model=digit_models["v1"])
    s.add_items(digit_models["items"][:150], progress=False)
    with serving(str(tmp_path / "g"), "--refresh-seconds", "0.05", "--models-dir", os.path.dirname(digit_models["v2"]), "--workers", "2") as url:
        yield url


@pytest.mark.processes
def test_http_api_under_upgrade_and_backfill(server, digit_models):
    c = httpx.Client(base_url=server, timeout=30)
    assert "/query" in c.get("/openapi.json").json()["paths"]
    v = c.post("/query", json={"vectors": np.eye(16)[:2].tolist(), "k": 5}).json()
    assert len(v["results"]) == 2 and len(v["results"][0]["ids"]) == 5
    # bad requests: 4xx with a message
    assert c.post("/query", json={"k": 5}).status_code == 422
    assert c.post("/query", json={"vectors": [[1.0, 2.0]], "k": 5}).status_code == 400
    assert c.post("/query", json={"vectors": [[1.0] * 16], "k": 0}).status_code == 422
    r = c.post("/upgrade", json={"model": "no-such-model"})
    assert r.status_code == 400 and "unknown model" in r.json()["detail"]
    assert c.post("/items/delete", json={"ids": ["nope"]}).status_code == 400

    failures = answered = 0
    vec = np.random.default_rng(0).normal(size=(1, 16)).tolist()

    def ask() -> None:
        nonlocal failures, answered
        r = c.post("/query", json={"vectors": vec, "k": 10})
        answered += 1
        failures += int(r.status_code != 200 or len(r.json()["results"][0]["ids"]) != 10)

    for _ in range(10):
        ask()
    assert c.post("/upgrade", json={"model": "v2"}).json()["serving"] == "v2"  # a folder of --models-dir, by name
    assert c.post("/backfill", json={"batch_size": 2}).status_code == 202
    status = c.get("/backfill").json()
    while status["running"] or status["pending"]:
        ask()
        status = c.get("/backfill").json()
        assert status["last_error"] is None
    assert status["rows_by_version"] == {"v2": 150}
    for _ in range(6):  # fresh connections reach either worker: both know the job and its report
        report = httpx.get(f"{server}/backfill", timeout=30).json()["last_report"]
        assert report is not None and report["done"] == 150
    assert failures == 0 and answered > 10
    assert c.post("/backfill", headers={"Content-Type": "application/json"}).status_code == 202  # no body: the defaults
    assert c.post("/items/delete", json={"ids": ["d0"]}).json() == {"deleted": 1}
    assert c.get("/health").json()["rows"] == 149
