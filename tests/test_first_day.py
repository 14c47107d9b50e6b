"""What a newcomer trips over on day one: each message says what is wrong and what to do, real
corpora with empty documents load, and results say which query they answer."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from compatret.cli.main import main
from compatret.core.errors import CompatretError
from compatret.evaluation.regression import Interval, verdict
from compatret.store.gallery import Gallery
from compatret.engine.service import Service
from compatret.core.lineage import VERSION_FILE


def cli(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(res) -> str:
    assert res.exit_code == 2, (res.exit_code, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def write_jsonl(path, rows: list[dict | None]) -> str:
    """One JSON object per line; None leaves a blank line (files have them)."""
    path.write_text("".join(("" if r is None else json.dumps(r)) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def text_gallery(tmp_path_factory, scifact_subset):
    """20 SciFact abstracts embedded by MiniLM-L3 (ONNX)."""
    root = tmp_path_factory.mktemp("first_day")
    s = Service.create(root / "g", model="minilm-l3")
    s.add_items(scifact_subset["docs"][:20], progress=False)
    return root / "g"


def test_empty_documents_are_refused_naming_the_line_or_left_out_on_request(tmp_path, scifact_subset):
    docs = scifact_subset["docs"][:6]
    items = write_jsonl(tmp_path / "corpus.jsonl", [*docs[:3], {"id": "471", "title": "", "text": ""}, *docs[3:],
                                                    {"id": "472", "text": "   "}])
    g = tmp_path / "g"
    assert cli("index", "create", g, "--model", "minilm-l3").exit_code == 0
    line = one_error_line(cli("index", "add", g, "--items", items))
    assert f"{items}:4:" in line and "'471'" in line and "2 such items" in line and "--skip-empty" in line
    assert Gallery.open(g).count() == 0  # all or nothing

    res = cli("index", "add", g, "--items", items, "--skip-empty", "--json")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert (report["added"], report["skipped_empty"], report["skipped_empty_ids"], report["rows"]) == (6, 2, ["471", "472"], 6)
    again = cli("index", "add", g, "--items", items, "--skip-empty")  # the summary says it too
    assert again.exit_code == 0 and "added 0 rows (6 already stored)" in again.stdout
    assert "left out 2 empty items (--skip-empty): '471', '472'" in again.stdout
    assert one_error_line(cli("index", "add", g, "--vectors", tmp_path / "x.npy", "--skip-empty")).endswith("--skip-empty goes with --items")


def test_duplicate_ids_are_named_with_where_they_are(tmp_path, text_gallery):
    items = write_jsonl(tmp_path / "dup.jsonl", [{"id": "a", "text": "one"}, {"id": "b", "text": "two"}, None,
                                                 {"id": "a", "text": "three"}])
    line = one_error_line(cli("index", "add", text_gallery, "--items", items))
    assert line.endswith("duplicate id 'a' in the input: lines 1 and 4")  # line 3 is blank: file lines, not item numbers
    s = Service.open(text_gallery)
    with pytest.raises(CompatretError, match=r"duplicate id 'x' in the input: items 2 and 3"):
        s.add_items([{"id": "w", "text": "w"}, {"id": "x", "text": "x"}, {"id": "x", "text": "y"}], progress=False)
    with pytest.raises(CompatretError, match=r"duplicate id 'r' in the input: rows 1 and 3"):
        s.add_vectors(np.ones((3, 384), np.float32), ids=["r", "q", "r"])


def test_a_query_on_an_empty_gallery_says_it_is_empty(tmp_path):
    g = tmp_path / "empty"
    assert cli("index", "create", g, "--model", "minilm-l3").exit_code == 0
    line = one_error_line(cli("query", g, "--text", "anything"))
    assert "is empty" in line and f"compatret index add {g} --items" in line


def test_query_json_lines_say_which_query_they_answer(tmp_path, text_gallery, scifact_subset):
    qid, text = next(iter(scifact_subset["queries"].items()))
    queries = write_jsonl(tmp_path / "q.jsonl", [{"_id": qid, "text": text}, {"_id": "q2", "text": "heart disease"}])
    res = cli("query", text_gallery, "--queries", queries, "-k", "3", "--json")
    assert res.exit_code == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert [(x["query_index"], x["query_id"], x["query_text"]) for x in lines] == [(0, qid, text), (1, "q2", "heart disease")]
    assert all(len(x["ids"]) == 3 for x in lines)
    one = json.loads(cli("query", text_gallery, "--text", "vitamin D", "--json").stdout)
    assert one["query_text"] == "vitamin D" and "query_id" not in one


def test_an_incompatible_upgrade_names_adapt_with_the_users_own_paths(text_gallery):
    line = one_error_line(cli("index", "upgrade", text_gallery, "--model", "minilm-l6"))
    assert "cannot read this gallery's rows ('minilm-l3' vectors)" in line
    assert f"compatret adapt {text_gallery} --model minilm-l6 --out ADAPTER_DIR" in line


def test_adapt_on_an_empty_gallery_says_it_is_empty(tmp_path):
    for how in (["--model", "minilm-l3"], ["--dim", "384", "--version-id", "minilm-l3"]):
        g = tmp_path / how[0][2:]
        assert cli("index", "create", g, *how).exit_code == 0
        line = one_error_line(cli("adapt", g, "--model", "minilm-l6", "--out", tmp_path / "ad"))
        assert f"the gallery {g} is empty" in line and not (tmp_path / "ad").exists()
        assert ("--items FILE" in line) == (how[0] == "--model")  # a gallery of bare vectors: create it with --model


LONG_ID = "digits-resnet18-w0.125-bct-v2-2026"


def test_upgrade_info_and_history_read_cleanly(tmp_path, digit_models):
    g, v2 = tmp_path / "g", tmp_path / "v2"
    shutil.copytree(digit_models["v2"], v2)  # v2 under a long id, as real model ids are: columns must still line up
    record = json.loads((v2 / VERSION_FILE).read_text())
    (v2 / VERSION_FILE).write_text(json.dumps({**record, "id": LONG_ID}))
    s = Service.create(g, model=digit_models["v1"])
    s.add_items(digit_models["items"][:40], progress=False)
    up = cli("index", "upgrade", g, "--model", v2)
    assert up.exit_code == 0, up.stderr
    assert "nothing re-embedded; stored rows: 40 are read as they are (same space)" in up.stdout  # what `index info` says
    first = Service.open(g).gallery.version - 1
    assert cli("index", "rollback", g, "--to", first).exit_code == 0

    info = cli("index", "info", g).stdout.splitlines()
    events = [line.split(None, 2)[2] for line in info if line.startswith("history")]
    assert events == ["created with v1", f"rollback to version {first}"]  # the rollback restored the record before the upgrade

    history = cli("index", "history", g, "--every-version").stdout.splitlines()
    assert len(history) >= 4 and any(h.endswith(f"upgrade from v1 to {LONG_ID}") for h in history)
    for column in (" rows  serving ", re.compile(r"serving \S+\s+\S")):
        starts = {h.index(column) if isinstance(column, str) else column.search(h).end() for h in history}
        assert len(starts) == 1, history  # every line's columns start at the same place


@pytest.mark.parametrize(("change", "queries", "expected"), [
    (Interval(-0.002, -0.017, 0.013), 76, "undecided"),  # the case: too few queries to tell
    (Interval(0.010, -0.004, 0.024), 76, "pass"),
    (Interval(-0.030, -0.045, -0.015), 76, "worse"),  # wide, but all of it below the allowed drop
    (Interval(-0.006, -0.008, -0.004), 2000, "worse"),  # narrow and past the allowed drop
])
def test_the_gate_says_when_it_cannot_decide(change, queries, expected):
    outcome, why = verdict(change, queries, 0.005)
    assert outcome == expected
    if expected == "undecided":
        assert "judge more queries (about 684" in why and "--max-drop 0.017" in why
