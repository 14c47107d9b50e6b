"""Hostile inputs, each refused with a 4xx or one error line, the table version unchanged.

A real `compatret serve` process with API keys and a models dir, real model folders made
hostile (paths out of the folder, symlinks, recursion, same id with other weights), the CLI.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from compatret import CompatretError
from compatret.cli.main import main
from compatret.encoders import load_encoder
from compatret.store.gallery import Gallery
from compatret.engine.service import Service
from compatret.core.lineage import VERSION_FILE, Compat, ModelVersion
from compatret.core.contract import resolve
from compatret.testing.serve import serving

WRITE_KEY = "write-key-0123456789abcdef"
READ_KEY = "read-key-0123456789abcdef"


def one_error_line(res) -> str:
    """A refused CLI command: non-zero exit, no traceback, exactly one `error:` line."""
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    return lines[0]


@pytest.fixture(scope="module")
def served(tmp_path_factory, digit_models):
    """A served image gallery; models dir holds v2 and a symlink to a model outside it."""
    root = tmp_path_factory.mktemp("served")
    models = root / "models"
    models.mkdir()
    shutil.copytree(digit_models["v2"], models / "v2")
    outside = root / "outside-model"
    shutil.copytree(digit_models["v2"], outside)
    (models / "escape").symlink_to(outside)
    s = Service.create(root / "g", model=digit_models["v1"])
    s.add_items(digit_models["items"][:60], progress=False)
    keys = root / "keys.txt"
    keys.write_text(f"# test keys\nwrite {WRITE_KEY}\nread {READ_KEY}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("COMPATRET_API_KEY", "COMPATRET_READ_API_KEY")}
    with serving(str(root / "g"), "--refresh-seconds", "0.05", "--api-key-file", str(keys), "--models-dir", str(models),
                 "--max-body-mb", "1", env=env) as url:
        yield {"url": url, "gallery": root / "g", "root": root}


def client(served, key: str | None = WRITE_KEY) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=served["url"], headers=headers, timeout=30)


def table_version(served) -> int:
    return Gallery.open(served["gallery"]).version


# ---- HTTP ------------------------------------------------------------------------------------
HOSTILE_REQUESTS = [
    # (name, method, path, json body, expected status)
    ("image path over HTTP", "/items", {"items": [{"id": "x", "image_path": "/etc/shadow"}]}, 422),
    ("proc environ as image path", "/items", {"items": [{"id": "x", "image_path": "/proc/self/environ"}]}, 422),
    ("absolute model path in query", "/query", {"vectors": [[1.0] * 16], "model": "/etc"}, 422),
    ("dot-dot model name in upgrade", "/upgrade", {"model": "../v2"}, 422),
    ("absolute model path in upgrade", "/upgrade", {"model": "/tmp"}, 422),
    ("symlink out of the models dir", "/upgrade", {"model": "escape"}, 400),
    ("unknown model name", "/query", {"vectors": [[1.0] * 16], "model": "nope"}, 400),
    ("text query read as a file on an image gallery", "/query", {"texts": ["/proc/self/environ"]}, 400),
    ("infinity in a vector", "/query", {"vectors": [[1e400] + [0.0] * 15]}, 422),
    ("zero vector", "/query", {"vectors": [[0.0] * 16]}, 422),
    ("ragged vectors", "/query", {"vectors": [[1.0] * 16, [1.0] * 15]}, 422),
    ("wrong dim", "/query", {"vectors": [[1.0] * 15]}, 400),
    ("k beyond the bound", "/query", {"vectors": [[1.0] * 16], "k": 10**9}, 422),
    ("too many queries", "/query", {"vectors": [[1.0] * 16] * 10_000}, 422),
    ("invalid base64 image", "/items", {"items": [{"id": "x", "image_base64": "%%%not-base64%%%"}]}, 422),
    ("bytes that are no image", "/items", {"items": [{"id": "x", "image_base64": base64.b64encode(b"#!/bin/sh\nid\n").decode()}]}, 400),
    ("unknown field", "/query", {"vectors": [[1.0] * 16], "debug": True}, 422),
    ("delete unknown ids", "/items/delete", {"ids": ["no-such-row"]}, 400),
]


@pytest.mark.parametrize("name,path,body,status", HOSTILE_REQUESTS, ids=[h[0] for h in HOSTILE_REQUESTS])
@pytest.mark.processes
def test_hostile_request_refused(served, name, path, body, status):
    before = table_version(served)
    r = client(served).post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert r.status_code == status, (name, r.text)
    assert r.json()["detail"]  # says why
    assert "Traceback" not in r.text
    assert table_version(served) == before


@pytest.mark.processes
def test_nan_literal_refused(served):
    """JSON has no NaN, but Python's parser accepts the literal: it must not reach a kernel."""
    r = client(served).post("/query", content='{"vectors": [[NaN, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]]}',
                            headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "vectors" in json.dumps(r.json()["detail"])


@pytest.mark.processes
def test_oversized_body_refused(served):
    before = table_version(served)
    big = json.dumps({"items": [{"id": f"x{i}", "text": "a" * 10_000} for i in range(200)]})  # 2 MB > 1 MB limit
    r = client(served).post("/items", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "request body over" in r.json()["detail"]
    assert table_version(served) == before


@pytest.mark.processes
def test_keys_and_scopes(served, digit_models):
    before = table_version(served)
    body = {"ids": ["d0"]}
    assert client(served, None).post("/items/delete", json=body).status_code == 401
    assert client(served, "not-a-key-at-all-0000").post("/items/delete", json=body).status_code == 401
    r = client(served, READ_KEY).post("/items/delete", json=body)
    assert r.status_code == 403 and "write key" in r.json()["detail"]
    assert client(served, READ_KEY).post("/upgrade", json={"model": "v2"}).status_code == 403
    assert client(served, READ_KEY).post("/backfill", json={}).status_code == 403
    assert client(served, READ_KEY).post("/backfill/stop", json={}).status_code == 403
    form = {"Content-Type": "application/x-www-form-urlencoded"}  # what a cross-site form sends: refused before anything
    assert client(served).post("/items/delete", content="ids=d0", headers=form).status_code == 415
    bare = client(served).post("/backfill/stop")  # no body, no type: the one line says what to send
    assert bare.status_code == 415 and "send {}" in bare.json()["detail"]
    assert client(served, READ_KEY).post("/rollback", json={"version": 1}).status_code == 403
    assert client(served, None).post("/query", json={"vectors": [[1.0] * 16]}).status_code == 401
    assert client(served, None).get("/gallery").status_code == 401
    assert client(served, None).get("/history").status_code == 401
    assert table_version(served) == before
    # what the scopes allow
    assert client(served, READ_KEY).post("/query", json={"vectors": [[1.0] * 16], "k": 3}).status_code == 200
    assert client(served, READ_KEY).get("/backfill").status_code == 200
    assert client(served, None).get("/health").status_code == 200
    # the console's page and files hold no data: open, with a policy that runs only its own script
    page = client(served, None).get("/")
    assert page.status_code == 200 and "script-src" not in page.headers["content-security-policy"]
    assert "default-src 'self'" in page.headers["content-security-policy"] and "console.js" in page.text
    assert client(served, None).get("/console/console.js").status_code == 200
    assert client(served, None).get("/console/..%2F..%2Fserver.py").status_code == 404
    assert client(served, READ_KEY).get("/gallery").json()["can_write"] is False
    assert client(served).get("/gallery").json()["can_write"] is True
    img = base64.b64encode(digit_models["items"][100]["image"]).decode()
    r = client(served).post("/query", json={"images_base64": [img], "k": 3})
    assert r.status_code == 200 and len(r.json()["results"][0]["ids"]) == 3
    assert client(served).post("/items", json={"items": [{"id": "new-1", "image_base64": img}]}).json() == {"added": 1}
    assert table_version(served) > before


def test_serve_refuses_public_host_without_keys(tmp_path, digit_models):
    Service.create(tmp_path / "g", model=digit_models["v1"])
    env = {k: v for k, v in os.environ.items() if k not in ("COMPATRET_API_KEY", "COMPATRET_READ_API_KEY")}
    res = CliRunner(env=env).invoke(main, ["serve", str(tmp_path / "g"), "--host", "0.0.0.0"])
    assert "without API keys" in one_error_line(res)


# ---- model folders ---------------------------------------------------------------------------
def _copy(src: str, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _set_encoder_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "encoder.json").read_text())
    (folder / "encoder.json").write_text(json.dumps({**cfg, **changes}))


@pytest.mark.parametrize("item_encoder", [".", "/etc", "../v1", "sub/../../v1"])
def test_item_encoder_escapes_refused(tmp_path, digit_models, item_encoder):
    """Checked before any weights load (this folder holds no sentence-transformers weights)."""
    folder = _copy(digit_models["v2"], tmp_path / "m")
    _set_encoder_config(folder, kind="sentence-transformers", item_encoder=item_encoder)
    with pytest.raises(CompatretError):
        load_encoder(str(folder))


def test_onnx_paths_confined(tmp_path, digit_models):
    folder = _copy(digit_models["v2"], tmp_path / "m")
    _set_encoder_config(folder, kind="onnx", onnx="/etc/passwd", tokenizer="tok.json")
    with pytest.raises(CompatretError, match="relative path inside"):
        load_encoder(str(folder))
    (folder / "graph").symlink_to("/etc/hostname")
    _set_encoder_config(folder, kind="onnx", onnx="graph", tokenizer="tok.json")
    with pytest.raises(CompatretError, match="leads out"):
        load_encoder(str(folder))


@pytest.mark.parametrize("path", ["/etc/passwd", "../secrets.npy", "transforms/../../x.npy", ""])
def test_transform_path_escapes_refused(path):
    v1 = ModelVersion("v1", 4)
    with pytest.raises(CompatretError):
        ModelVersion.from_dict({"id": "v2", "dim": 4, "parent": v1.to_dict(), "compat": {"kind": "transform", "transform_path": path}})


def test_transform_symlink_out_of_gallery_refused(tmp_path):
    (tmp_path / "g" / "transforms").mkdir(parents=True)
    np.save(tmp_path / "elsewhere.npy", np.zeros((5, 4), np.float32))
    (tmp_path / "g" / "transforms" / "v2.npy").symlink_to(tmp_path / "elsewhere.npy")
    v1 = ModelVersion("v1", 4)
    v2 = ModelVersion("v2", 4, parent=v1, compat=Compat.transform("transforms/v2.npy"))
    with pytest.raises(CompatretError, match="leads out"):
        resolve(v2, v1, tmp_path / "g")


def test_same_id_different_weights_refused(tmp_path, digit_models):
    """A folder whose record says `v1` but holds v2's weights is not the gallery's v1."""
    runner = CliRunner()
    g = tmp_path / "g"
    s = Service.create(g, model=digit_models["v1"])
    s.add_items(digit_models["items"][:20], progress=False)
    before = Gallery.open(g).version
    fake = _copy(digit_models["v2"], tmp_path / "fake-v1")
    record = json.loads((Path(digit_models["v1"]) / VERSION_FILE).read_text())
    record.pop("digest", None)  # a hand-written record: the folder's own weights decide
    (fake / VERSION_FILE).write_text(json.dumps(record))
    np.save(tmp_path / "q.npy", np.ones((1, 16), np.float32))
    line = one_error_line(runner.invoke(main, ["query", str(g), "--vectors", str(tmp_path / "q.npy"), "--model", str(fake)]))
    assert "different weights" in line
    child = _copy(digit_models["v2"], tmp_path / "child")
    rec = json.loads((child / VERSION_FILE).read_text())
    rec["parent"]["digest"] = "sha256:" + "0" * 64  # its parent claims weights the gallery's v1 does not have
    (child / VERSION_FILE).write_text(json.dumps(rec))
    assert "different weights" in one_error_line(runner.invoke(main, ["index", "upgrade", str(g), "--model", str(child)]))
    assert Gallery.open(g).version == before


def test_replaced_weights_refused(tmp_path, digit_models):
    folder = _copy(digit_models["v2"], tmp_path / "m")
    weights = next(p for p in folder.iterdir() if p.suffix == ".pt")
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(CompatretError, match="weights differ"):
        load_encoder(str(folder))


def test_cli_refuses_nan_and_zero_query_vectors(tmp_path, digit_models):
    runner = CliRunner()
    g = tmp_path / "g"
    Service.create(g, model=digit_models["v1"]).add_items(digit_models["items"][:20], progress=False)
    for name, q in (("nan", np.full((1, 16), np.nan, np.float32)), ("zero", np.zeros((2, 16), np.float32))):
        np.save(tmp_path / f"{name}.npy", q)
        line = one_error_line(runner.invoke(main, ["query", str(g), "--vectors", str(tmp_path / f"{name}.npy")]))
        assert ("NaN" in line) if name == "nan" else ("all zeros" in line)


@pytest.mark.processes
def test_a_server_with_only_a_read_key_refuses_keyless_writes(tmp_path, digit_models):
    """Keys configured at all means every route needs one: a guard that looked at the write
    keys alone would let a keyless write through here."""
    s = Service.create(tmp_path / "g", model=digit_models["v1"])
    s.add_items(digit_models["items"][:10], progress=False)
    before = Gallery.open(tmp_path / "g").latest_version()
    env = {k: v for k, v in os.environ.items() if k not in ("COMPATRET_API_KEY", "COMPATRET_READ_API_KEY")}
    with serving(str(tmp_path / "g"), "--refresh-seconds", "0.05", env={**env, "COMPATRET_READ_API_KEY": READ_KEY}) as url:
        def ask(key: str | None) -> httpx.Client:
            return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=30)

        assert ask(None).post("/items/delete", json={"ids": ["d0"]}).status_code == 401
        assert ask(None).post("/items", json={"items": [{"id": "x", "text": "t"}]}).status_code == 401
        assert ask(None).post("/no-such-route", json={}).status_code == 401  # unknown routes need a key too
        assert ask(READ_KEY).post("/items/delete", json={"ids": ["d0"]}).status_code == 403
        assert ask(None).post("/query", json={"vectors": [[1.0] * 16]}).status_code == 401
        assert ask(READ_KEY).post("/query", json={"vectors": [[1.0] * 16], "k": 3}).status_code == 200
        assert ask(READ_KEY).get("/gallery/").status_code in (200, 307)  # a trailing slash reaches the same read route
        assert ask(None).get("/health").status_code == 200
    assert Gallery.open(tmp_path / "g").latest_version() == before
