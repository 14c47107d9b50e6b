"""The CLI contract through click's runner: --json output, one-line errors, exit codes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from compatret import Compat, ModelVersion
from compatret.cli.main import main
from compatret.core.transforms import normalize


@pytest.fixture()
def runner() -> CliRunner:
    return CliRunner()


def ok(runner: CliRunner, *args: str) -> str:
    res = runner.invoke(main, list(args), catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.stdout


def fails(runner: CliRunner, *args: str, message: str = "") -> str:
    """Exit code 2 and either compatret's one `error:` line or click's usage error; `message` in it."""
    res = runner.invoke(main, list(args), catch_exceptions=False)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    ours = len(lines) == 1 and lines[0].startswith("error:")
    clicks = lines[0].startswith("Usage:") and lines[-1].startswith("Error:")
    assert ours or clicks, res.stderr
    assert message in res.stderr, res.stderr
    return res.stderr


def test_vector_gallery_lifecycle(runner, tmp_path):
    g = str(tmp_path / "g")
    x = normalize(np.random.default_rng(0).normal(size=(300, 12)))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "ids.npy", np.array([f"item-{i}" for i in range(300)]))
    info = json.loads(ok(runner, "index", "create", g, "--dim", "12", "--version-id", "v1", "--json"))
    assert info["dim"] == 12 and info["rows"] == 0
    out = json.loads(ok(runner, "index", "add", g, "--vectors", str(tmp_path / "x.npy"), "--ids", str(tmp_path / "ids.npy"), "--json"))
    assert out == {"added": 300, "skipped": 0, "rows": 300}
    np.save(tmp_path / "q.npy", x[:3])
    lines = ok(runner, "query", g, "--vectors", str(tmp_path / "q.npy"), "-k", "4", "--json").splitlines()
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert first["ids"][0] == "item-0" and len(first["scores"]) == 4
    assert first["scores"] == sorted(first["scores"], reverse=True)

    v1 = ModelVersion("v1", 12)
    v2 = ModelVersion("v2", 20, parent=v1, compat=Compat.prefix(12), method="bt2")
    (tmp_path / "v2").mkdir()
    v2.save(tmp_path / "v2")
    up = json.loads(ok(runner, "index", "upgrade", g, "--model", str(tmp_path / "v2"), "--json"))
    assert up["serving"] == "v2" and up["query_dims"] == 12 and up["seconds"] < 1
    np.save(tmp_path / "q2.npy", np.hstack([x[:1], np.zeros((1, 8), np.float32)]))
    assert json.loads(ok(runner, "query", g, "--vectors", str(tmp_path / "q2.npy"), "--json"))["ids"][0] == "item-0"
    info = json.loads(ok(runner, "index", "info", g, "--json"))
    assert info["serving_model"] == "v2" and [v["id"] for v in info["lineage"]] == ["v2", "v1"]
    assert "lineage" in ok(runner, "index", "info", g)
    assert json.loads(ok(runner, "index", "delete", g, "--id", "item-1", "--json"))["rows"] == 299


def test_text_gallery_with_real_model(runner, tmp_path, scifact_subset):
    g = str(tmp_path / "t")
    items = tmp_path / "items.jsonl"
    items.write_text("\n".join(json.dumps(d) for d in scifact_subset["docs"][:60]))
    ok(runner, "index", "create", g, "--model", "minilm-l3")
    ok(runner, "index", "add", g, "--items", str(items), "--json")
    doc = scifact_subset["docs"][5]
    res = json.loads(ok(runner, "query", g, "--text", doc["title"], "-k", "3", "--payload", "--json"))
    assert res["ids"][0] == doc["id"] and res["payloads"][0]["text"] == doc["text"]
    assert res["payloads"][0]["title"] == doc["title"] and res["payloads"][0]["model_version"] == "minilm-l3"
    shown = ok(runner, "query", g, "--text", doc["title"], "-k", "1", "--payload")
    assert f"[minilm-l3]  {doc['title']} | {doc['text'][:40]}" in shown  # the title, then the text, and which model's vector
    fails(runner, "index", "upgrade", g, "--model", "minilm-l6")  # different lineage: refused


@pytest.mark.parametrize(
    "args, message",
    [
        (["index", "info", "/nonexistent/gallery"], "no gallery at"),
        (["index", "create", "G", "--dim", "4"], "give --model, or both --dim and --version-id"),
        (["query", "G", "--text", "a", "--vectors", "x.npy"], "error:"),
        (["index", "add", "G", "--items", "missing.jsonl"], "no such file"),
        (["index", "upgrade", "G", "--model", "no-such-model"], "unknown model 'no-such-model'"),
        (["query", "G", "--vectors", "bad.npy"], "error:"),
        (["query", "G", "--vectors", "q3.npy"], "shape"),
        (["index", "add", "G", "--items", "bad.jsonl"], "bad.jsonl:2: not valid JSON"),
        (["index", "add", "G", "--vectors", "y.npy", "--ids", "taken.npy"], "already in the gallery with other content, e.g. '1'"),
        (["index", "add", "G", "--ids", "taken.npy", "--items", "bad.jsonl"], "--ids goes with --vectors"),
        (["index", "prune", "G", "--older-than-days", "inf"], "from 0 to 365000"),
        (["index", "prune", "G", "--older-than-days", "nan"], "from 0 to 365000"),
        (["index", "prune", "G", "--older-than-days", "1e10"], "from 0 to 365000"),
        (["index", "rollback", "G", "--to", "0"], "no version 0 (have 1..4)\n"),  # no "pruned" hint below version 1
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(runner, tmp_path, args, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ok(runner, "index", "create", "G", "--dim", "4", "--version-id", "v1")
    np.save("x.npy", np.ones((2, 4), np.float32))
    np.save("ids.npy", np.array(["0", "1"]))
    ok(runner, "index", "add", "G", "--vectors", "x.npy", "--ids", "ids.npy")
    np.save("q3.npy", np.ones((1, 3), np.float32))
    (tmp_path / "bad.npy").write_text("not an array")
    (tmp_path / "bad.jsonl").write_text('{"id": 1, "text": "fine"}\n{broken\n')
    np.save("taken.npy", np.array(["new", "1"]))
    np.save("y.npy", np.arange(8, dtype=np.float32).reshape(2, 4))  # "1" holds another vector
    rows_before = 2
    fails(runner, *args, message=message)
    assert json.loads(ok(runner, "index", "info", "G", "--json"))["rows"] == rows_before
