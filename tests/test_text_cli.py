"""`train retriever` and `eval retrieval`: JSON out, and bad input as one `error:` line with exit 2."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from text_env import text_env  # noqa: F401

from compatret.commands.retrieval_eval import retrieval
from compatret.commands.retriever import retriever


def _one_error_line(res) -> str:
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in res.output, res.stderr
    return lines[0]


def test_eval_retrieval_json(text_env):  # noqa: F811
    res = CliRunner().invoke(retrieval, ["--gallery", str(text_env.gallery), "--data", str(text_env.beir), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["query_model"] == out["gallery_model"] == "minilm-l6" and 0 < out["ndcg_at_10"] <= 1
    from compatret.index.gallery import Gallery

    assert out["gallery_rows"] == {"minilm-l6": Gallery.open(text_env.gallery).count()}  # the rows' models, as they are now


@pytest.mark.parametrize(
    "args, message",
    [
        (["--gallery", "/nonexistent/g", "--data", "/nonexistent/d"], "error:"),
        (["--gallery", "{gallery}", "--data", "{beir}", "--split", "dev"], "error: no qrels for split 'dev': the data has test, train"),
        (["--gallery", "{gallery}", "--data", "{beir}", "--query-model", "minilm-l3"], "error:"),
    ],
)
def test_eval_retrieval_bad_input(text_env, args, message):  # noqa: F811
    args = [a.format(gallery=text_env.gallery, beir=text_env.beir) for a in args]
    assert _one_error_line(CliRunner().invoke(retrieval, args, catch_exceptions=False)).startswith(message)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "adore", "--gallery", "/nonexistent"], "no gallery"),
        (["--method", "bt2", "--extra-dims", "0"], "extra-dims"),
        (["--method", "star", "--batch-size", "1"], "batch-size"),
        (["--method", "bct", "--old", "minilm-l3"], "no vectors of 'minilm-l3'"),
        (["--method", "adore", "--init", "minilm-l3"], "frozen"),
        (["--method", "bct", "--align-docs", "-1"], "align-docs"),
        (["--method", "star", "--align-docs", "100"], "align-docs applies to the compatible methods"),
    ],
)
def test_train_retriever_bad_input(text_env, tmp_path, extra, message):  # noqa: F811
    base = {"--old": "minilm-l6", "--gallery": str(text_env.gallery), "--train-data": str(text_env.beir), "--out": str(tmp_path / "m")}
    for flag, value in zip(extra[::2], extra[1::2]):
        base[flag] = value
    args = [x for kv in base.items() for x in kv]
    line = _one_error_line(CliRunner().invoke(retriever, args, catch_exceptions=False))
    assert line.startswith("error:") and message in line
