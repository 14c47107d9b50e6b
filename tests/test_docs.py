"""The docs: README.md and docs/*.md.

Every fenced bash/sh/shell/python block there is either run by a test (RUN_BY, below) or says, in a
`<!-- needs: ... -->` line right above it, what it needs that the tests do not have (all of a data set,
an hour, a cluster, an endpoint). The blocks run here run as written, in a fresh folder on 150
SciFact abstracts: every path they name is one they make. And the site builds with
`mkdocs build --strict`."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNABLE = {"bash", "sh", "shell", "python"}
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
NEEDS = re.compile(r"^\s*<!--\s*needs:\s*\S.*-->\s*$")
# an untagged block that starts like one of these is a command the walker would miss: tag it
COMMANDS = ("compatret ", "python ", "pip ", "pytest", "curl ", "mkdocs ", "bash ", "ray ", "$ ")

OWN_DATA = "tests/test_docs.py::test_own_data_commands_python_api_and_http_run_as_written"
# (page, index among the page's runnable blocks) -> (what runs it, how the block begins). What runs it:
# a test "path::name", or a script that types the block's lines itself (.ci/run).
RUN_BY: dict[tuple[str, int], tuple[str, str]] = {
    ("README.md", 0): (".ci/run", 'pip install "torch==2.13.0"'),
    ("README.md", 1): (
        "tests/test_quickstart.py::test_quickstart_upgrades_without_backfill_and_prints_the_readme_table",
        "compatret quickstart",
    ),
    ("README.md", 2): ("tests/test_docs.py::test_the_readme_python_api_prints_what_its_comments_say", "import compatret"),
    ("README.md", 6): ("tests/test_docs.py::test_the_site_builds_strict", "mkdocs build --strict"),
    ("docs/own-data.md", 0): (OWN_DATA, "compatret index create indexes/docs"),
    ("docs/own-data.md", 1): (OWN_DATA, "# a model you did not train"),
    ("docs/api.md", 0): (OWN_DATA, "import compatret"),
    ("docs/http.md", 0): (OWN_DATA, "WRITE_KEY=$(openssl rand -hex 24)"),
    ("docs/frameworks.md", 2): (
        "tests/integrations/test_langchain_app.py::test_the_rag_example_moves_a_running_app_to_an_adapted_model_then_backfills",
        "python examples/langchain_rag.py",
    ),
    ("docs/frameworks.md", 4): (".ci/run", "pytest tests/integrations"),
    ("docs/benchmarks.md", 2): (
        "tests/test_benchmark_smoke.py::test_compat_image_benchmark_smoke_writes_the_issue_schema",
        "python eval/compat_image/run.py --smoke",
    ),
}


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository root
    line: int  # of the opening fence, 1-based
    language: str
    code: str  # dedented to the fence
    marker: str  # the line above the fence


def fences(page: str) -> list[Block]:
    """Every fenced block of a page, in order, whatever its language."""
    lines = (ROOT / page).read_text(encoding="utf-8").split("\n")
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        close = re.compile(rf"^\s*{re.escape(m['fence'][0])}{{{len(m['fence'])},}}\s*$")
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            j += 1
        indent = len(m["indent"])
        body = [ln[indent:] if ln[:indent].isspace() else ln.lstrip() for ln in lines[i + 1 : j]]
        out.append(Block(page, i + 1, m["lang"], "\n".join(body) + "\n", lines[i - 1] if i else ""))
        i = j + 1
    return out


def pages() -> list[str]:
    return ["README.md"] + sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))


def runnable(page: str) -> list[Block]:
    return [b for b in fences(page) if b.language in RUNNABLE]


def block(page: str, index: int, test: str) -> str:
    """The code of a block this file's test `test` runs, as RUN_BY registers it."""
    runner, begins = RUN_BY[(page, index)]
    assert runner == f"tests/test_docs.py::{test}", f"{page} block {index} is registered to {runner}, not {test}"
    code = runnable(page)[index].code
    assert code.lstrip().startswith(begins), f"{page} block {index} no longer begins with {begins!r}: update RUN_BY"
    return code


def test_every_block_is_run_by_a_test_or_says_what_it_needs():
    problems = []
    for page in pages():
        for index, b in enumerate(runnable(page)):
            where = f"{page}:{b.line} ({b.language} block {index})"
            registered, marked = (page, index) in RUN_BY, bool(NEEDS.match(b.marker))
            if not registered and not marked:
                problems.append(
                    f"{where}: no test runs it; register it in RUN_BY with its test, or put "
                    "'<!-- needs: WHAT THE TESTS DO NOT HAVE -->' on the line above it"
                )
            elif registered and marked:
                problems.append(f"{where}: registered in RUN_BY and marked as needing something: which is it?")
        for b in fences(page):
            first = b.code.lstrip().split("\n", 1)[0]
            if not b.language and first.startswith(COMMANDS):
                problems.append(f"{page}:{b.line}: an untagged block of commands ({first[:40]!r}): tag it bash or python")
    for (page, index), (runner, begins) in RUN_BY.items():
        found = runnable(page) if (ROOT / page).exists() else []
        if index >= len(found):
            problems.append(f"RUN_BY names {page} block {index}, which is not there")
            continue
        code = found[index].code
        if not code.lstrip().startswith(begins):
            problems.append(f"RUN_BY: {page} block {index} begins {code.lstrip()[:50]!r}, not {begins!r}")
        path, _, test = runner.partition("::")
        source = (ROOT / path).read_text(encoding="utf-8") if (ROOT / path).is_file() else None
        if source is None:
            problems.append(f"RUN_BY: {page} block {index} is run by {path}, which is not there")
        elif test and not re.search(rf"^def {re.escape(test)}\(", source, re.M):
            problems.append(f"RUN_BY: {page} block {index} is run by {runner}, which {path} does not define")
        elif not test:  # a script: it must type each of the block's commands itself
            typed = {ln.strip() for ln in source.splitlines()}
            for ln in code.splitlines():
                if ln.strip() and not ln.strip().startswith("#") and ln.strip() not in typed:
                    problems.append(f"RUN_BY: {page} block {index}: {path} does not run {ln.strip()!r}")
    assert not problems, "\n".join(problems)


def test_the_readme_links_every_docs_page_and_its_links_resolve():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = [m.split("#", 1)[0] for m in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"[a-z]+:", m)]
    missing = [link for link in links if link and not (ROOT / link).exists()]
    assert not missing, f"README links to files that are not there: {missing}"
    listed = {link for link in links if link.startswith("docs/") and link.endswith(".md")}
    unlisted = sorted(set(p for p in pages() if p.startswith("docs/")) - listed)
    assert not unlisted, f"the README's Documentation list leaves out {unlisted}"
    assert len(text.splitlines()) <= 300, "the README is the door: at most 300 lines; guides go to docs/"


def test_the_site_builds_strict(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: the dev extra brings mkdocs-material and mkdocstrings[python]")
    command = shlex.split(block("README.md", 6, "test_the_site_builds_strict").split("#", 1)[0])
    assert command == ["mkdocs", "build", "--strict"]
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", *command, "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for page in pages():
        if page.startswith("docs/"):
            stem = Path(page).stem
            assert (site / ("index.html" if stem == "index" else f"{stem}/index.html")).is_file(), page
    home = (site / "index.html").read_text(encoding="utf-8")
    assert "new/old (no backfill)" in home and "--8&lt;--" not in home  # the README's quickstart, included


def commands(code: str) -> list[list[str]]:
    """Each `compatret ...` line of a bash block as arguments (comments dropped)."""
    out = []
    for line in code.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line.startswith("compatret "):
            out.append(shlex.split(line)[1:])
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the block no longer holds {old!r} once: update this test"
    return text.replace(old, new)


def test_the_readme_python_api_prints_what_its_comments_say(tmp_path, monkeypatch, capsys):
    """The README's Python API block, run as written: each print's output is the start of its comment."""
    code = block("README.md", 2, "test_the_readme_python_api_prints_what_its_comments_say")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (Python API)", "exec"), {})  # noqa: S102  the README's own example
    said = [line.split("#", 1)[1].strip().split(": ")[0] for line in code.splitlines() if line.startswith("print(")]
    assert capsys.readouterr().out.splitlines() == said


def test_own_data_commands_python_api_and_http_run_as_written(tmp_path, monkeypatch, data_root):
    from click.testing import CliRunner

    from compatret.cli import main

    test = "test_own_data_commands_python_api_and_http_run_as_written"
    monkeypatch.chdir(tmp_path)
    with (data_root / "scifact" / "corpus.jsonl").open() as fh:
        Path("corpus.jsonl").write_text("".join(next(fh) for _ in range(150)))
    queries = [json.loads(line) for line in (data_root / "scifact" / "queries.jsonl").open()][:3]
    Path("queries.jsonl").write_text("".join(json.dumps({"_id": q["_id"], "text": q["text"]}) + "\n" for q in queries))

    # docs/own-data.md, its two bash blocks
    shell = [c for i in (0, 1) for c in commands(block("docs/own-data.md", i, test))]
    assert [c[:2] for c in shell] == [
        ["index", "create"],
        ["index", "add"],
        ["query", "indexes/docs"],
        ["query", "indexes/docs"],
        ["adapt", "indexes/docs"],
        ["index", "upgrade"],
    ]
    for args in shell:
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, (args, res.stdout, res.stderr)
        if "--json" in args and args[0] == "query":
            assert [json.loads(line)["query_id"] for line in res.stdout.splitlines()] == [q["_id"] for q in queries]

    # docs/api.md, its python block
    python = block("docs/api.md", 0, test)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(python, "docs/api.md (Python API)", "exec"), scope)  # noqa: S102  the docs' own example
    assert scope["hits"][0].ids[0] == "d1"  # the document it added answers its question
    assert scope["index"].serving == json.loads(Path("models/docs-l6/compatret_version.json").read_text())["id"]
    assert scope["report"].done == 20

    # docs/http.md, the keys + serve + curl block, as written but for the port (a free one, not 8080),
    # a wait for the server to answer before the curl, and stopping the server at the end
    port = free_port()
    script = block("docs/http.md", 0, test)
    script = replace_once(script, "compatret serve indexes/docs ", f"compatret serve indexes/docs --port {port} ")
    script = replace_once(
        script,
        "--models-dir models/ &\n",
        f"--models-dir models/ &\nSERVER=$!; trap 'kill $SERVER 2>/dev/null' EXIT\n"
        f"for _ in $(seq 240); do curl -sf localhost:{port}/health >/dev/null && break; sleep 0.5; done\n",
    )
    script = replace_once(script, "localhost:8080/query", f"localhost:{port}/query")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(
        ["bash", "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0 and out.strip(), (proc.returncode, out, err[-3000:])
    hits = json.loads(out)["results"][0]
    assert len(hits["ids"]) == 5 and hits["ids"][0] == "d1" and len(hits["payloads"]) == 5
    assert "Vitamin D and bones" in json.dumps(hits["payloads"][0])
    assert "read" in Path(tmp_path / "keys.txt").read_text()
