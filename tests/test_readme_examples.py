"""The README's "Using it on your own data" commands and its Python API example, run as written
(in a fresh folder, on 150 SciFact abstracts): every path they name is one they make."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from click.testing import CliRunner

from compatret.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(section: str, language: str) -> list[str]:
    """The code blocks of one README section, in order."""
    text = README.read_text()
    start = text.index(f"## {section}")
    body = text[start:text.index("\n## ", start + 3)]
    return [part.split("```", 1)[0] for part in body.split(f"```{language}\n")[1:]]


def commands(block: str) -> list[list[str]]:
    """Each `compatret ...` line of a bash block as arguments (comments dropped)."""
    out = []
    for line in block.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line.startswith("compatret "):
            out.append(shlex.split(line)[1:])
    return out


def test_own_data_commands_and_python_api_run_as_written(tmp_path, monkeypatch, data_root):
    monkeypatch.chdir(tmp_path)
    with (data_root / "scifact" / "corpus.jsonl").open() as fh:
        Path("corpus.jsonl").write_text("".join(next(fh) for _ in range(150)))
    queries = [json.loads(line) for line in (data_root / "scifact" / "queries.jsonl").open()][:3]
    Path("queries.jsonl").write_text("".join(json.dumps({"_id": q["_id"], "text": q["text"]}) + "\n" for q in queries))

    shell = [c for b in blocks("Using it on your own data", "bash") for c in commands(b)]
    assert [c[:2] for c in shell] == [["index", "create"], ["index", "add"], ["query", "indexes/docs"], ["query", "indexes/docs"],
                                      ["adapt", "indexes/docs"], ["index", "upgrade"]]
    for args in shell:
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, (args, res.stdout, res.stderr)
        if "--json" in args and args[0] == "query":
            assert [json.loads(line)["query_id"] for line in res.stdout.splitlines()] == [q["_id"] for q in queries]

    (python,) = blocks("Python API", "python")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(python, "README.md (Python API)", "exec"), scope)  # noqa: S102  the README's own example
    svc = scope["svc"]
    assert scope["hits"][0].ids[0] == "d1"  # the document it added answers its question
    assert svc.meta.serving.id == json.loads(Path("models/docs-l6/compatret_version.json").read_text())["id"]
