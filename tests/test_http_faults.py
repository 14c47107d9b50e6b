"""HTTP faults of issue 27 (items 8 and 9), each against a real `compatret serve` on loopback:
workers outliving a killed parent, a chunked body over the limit answered 400, a server path in
a 400, a repeated id counted as two deletions, concurrent identical adds refused."""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest

from compatret.store.gallery import Gallery
from compatret.engine.service import Service
from compatret.core.lineage import Compat, ModelVersion
from compatret.core.transforms import LearnedMap, normalize
from compatret.testing.ports import free_port
from compatret.testing.serve import serving

ROWS = 20


def vector_gallery(path: Path) -> str:
    """A gallery of ROWS bare 8-d vectors, ids r0..r19."""
    vectors = normalize(np.random.default_rng(0).normal(size=(ROWS, 8)))
    Service.create(path, dim=8, version_id="v1").add_vectors(vectors, ids=[f"r{i}" for i in range(ROWS)])
    return str(path)


@pytest.fixture(scope="module")
def small_limit(tmp_path_factory) -> Iterator[str]:
    """A served vector gallery whose body limit is 1 MiB."""
    with serving(vector_gallery(tmp_path_factory.mktemp("faults") / "g"), "--max-body-mb", "1") as url:
        yield url


# ---- 8: workers die with their parent ---------------------------------------------------------
def _serve(gallery: str, port: int, log: Path, *options: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "compatret", "serve", gallery, "--port", str(port), *options],
                            stdout=subprocess.DEVNULL, stderr=log.open("wb"))


def _wait_health(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    pytest.fail(f"serve did not answer /health (exit {proc.poll()}): {log.read_text()}")


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's reaper may be slow to collect it)."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def test_workers_die_when_the_parent_is_killed(tmp_path):
    """SIGKILL of `serve --workers 2` closes the port within seconds: a restart on it serves."""
    gallery = vector_gallery(tmp_path / "g")
    port = free_port()
    parent = _serve(gallery, port, tmp_path / "first.log", "--workers", "2")
    workers: list[int] = []
    try:
        _wait_health(parent, port, tmp_path / "first.log")
        workers = _children(parent.pid)
        assert len(workers) >= 2, workers  # the two workers (and multiprocessing's resource tracker)
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while not _refused(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _refused(port), "the workers of a killed serve still answer on its port"
        while any(map(_running, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(map(_running, workers)), "the workers of a killed serve live on"
        again = _serve(gallery, port, tmp_path / "again.log")
        try:
            _wait_health(again, port, tmp_path / "again.log")
        finally:
            again.terminate()
            again.wait(timeout=10)
    finally:
        for pid in workers:  # a failed run leaves none behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---- 9a: a chunked body over the limit ------------------------------------------------------
def _post_chunked(url: str, path: str, chunks: Iterator[bytes]) -> tuple[int, dict]:
    """POST with Transfer-Encoding: chunked (http.client chunks an iterable body without a length)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("POST", path, body=chunks, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_chunked_body_over_the_limit_is_413(small_limit):
    def big() -> Iterator[bytes]:  # about 3 MiB of ids, over the 1 MiB limit, with no Content-Length
        yield b'{"ids": ["r1"'
        for _ in range(48):
            yield b', "x"' * 13_000
        yield b"]}"

    status, body = _post_chunked(small_limit, "/items/delete", big())
    assert status == 413 and "request body over" in body["detail"], (status, body)
    # under the limit, a chunked body reaches the route whole
    assert _post_chunked(small_limit, "/items/delete", iter([b'{"ids": ', b'["r1"]}'])) == (200, {"deleted": 1})
    declared = httpx.post(f"{small_limit}/items/delete", content=b" " * (2 * 2**20), headers={"Content-Type": "application/json"})
    assert declared.status_code == 413


# ---- 9c: a repeated id is one deletion ------------------------------------------------------
def test_delete_counts_rows_removed_not_ids_given(small_limit):
    before = httpx.get(f"{small_limit}/health").json()["rows"]
    r = httpx.post(f"{small_limit}/items/delete", json={"ids": ["r2", "r2", "r3"]})
    assert r.json() == {"deleted": 2}, r.text
    assert httpx.get(f"{small_limit}/health").json()["rows"] == before - 2


# ---- 9b: no server path in a 400 ------------------------------------------------------------
def test_damaged_transform_is_named_relative_to_the_gallery(tmp_path):
    """A gallery served through a fitted map whose file is damaged, then gone: 400 naming
    transforms/v2.npz, never the server's folder."""
    v1 = ModelVersion("v1", 8, "vector", method="external")
    v2 = ModelVersion("v2", 8, "vector", parent=v1, compat=Compat.transform("transforms/v2.npz"), method="adapter")
    (tmp_path / "v2" / "transforms").mkdir(parents=True)
    LearnedMap(np.eye(8, dtype=np.float32), np.zeros(8, np.float32)).save(tmp_path / "v2" / "transforms" / "v2.npz")
    v2.save(tmp_path / "v2")
    gallery = vector_gallery(tmp_path / "g")
    Service.open(gallery).upgrade(str(tmp_path / "v2"))
    stored = tmp_path / "g" / "transforms" / "v2.npz"
    stored.write_bytes(stored.read_bytes()[:100])  # cut short: no longer a readable .npz
    with serving(gallery) as url:
        for damage in ("truncated", "removed"):
            if damage == "removed":
                stored.unlink()
            r = httpx.post(f"{url}/query", json={"vectors": [[1.0] * 8], "k": 3}, timeout=30)
            assert r.status_code == 400, (damage, r.text)
            detail = r.json()["detail"]
            assert "transforms/v2.npz" in detail and str(tmp_path) not in detail and "/transforms" not in detail, (damage, detail)


# ---- 9d: concurrent identical adds ----------------------------------------------------------
def test_concurrent_identical_adds_all_succeed(tmp_path, digit_models):
    """Identical POST /items at once to two workers: each 200, the rows added once in all."""
    items = digit_models["items"][:12]
    body = {"items": [{"id": it["id"], "image_base64": base64.b64encode(it["image"]).decode(), "metadata": it["metadata"]}
                      for it in items]}
    Service.create(tmp_path / "g", model=digit_models["v1"])
    answers: list[httpx.Response] = []
    with serving(str(tmp_path / "g"), "--workers", "2") as url:
        start = threading.Barrier(8)

        def add() -> None:
            with httpx.Client(base_url=url, timeout=120) as c:  # a connection each: both workers take part
                start.wait()
                answers.append(c.post("/items", json=body))

        threads = [threading.Thread(target=add) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert [r.status_code for r in answers] == [200] * 8, [r.text for r in answers if r.status_code != 200]
    assert sum(r.json()["added"] for r in answers) == len(items)
    ids = Gallery.open(tmp_path / "g").scan(["id"]).column("id").to_pylist()
    assert sorted(ids) == sorted(it["id"] for it in items)
