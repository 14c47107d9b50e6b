"""`train retriever` and `eval retrieval`: JSON out, and bad input as one `error:` line with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from text_env import text_env  # noqa: F401

from compatret.cli.retrieval_eval import retrieval
from compatret.cli.retriever import retriever
from compatret.core.config import dataset
from compatret.train.text.config import config_from


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
    from compatret.store.gallery import Gallery

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


RECIPES = sorted((Path(__file__).resolve().parents[1] / "training").glob("scifact_*.toml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_shipped_text_recipes_are_valid(recipe):
    cfg = config_from(recipe, {"gallery": "g", "out": "m"})  # a typo or a wrong type in a recipe fails here
    assert Path(cfg.train_data) == dataset("scifact")  # relative data names resolve under COMPATRET_DATA


def test_flags_override_the_recipe(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('method = "bt2"\nold = "minilm-l6"\ntrain_data = "scifact"\nepochs = 2\nlr = 3e-5\n')
    cfg = config_from(recipe, {"gallery": "g", "epochs": 5, "lr": None})
    assert (cfg.method, cfg.epochs, cfg.lr, cfg.batch_size) == ("bt2", 5, 3e-5, 16)  # given, from the recipe, default
    assert cfg.out.endswith("models/bt2")


@pytest.mark.parametrize(
    "body, message",
    [
        ('method = "adore"\nold = "minilm-l6"\ntrain_data = "scifact"\nepochs = 0\n', "recipe {r}: epochs: Input should be greater than or equal to 1"),
        ('method = "adore"\nold = "minilm-l6"\ntrain_data = "scifact"\nepochs = "2"\n', "recipe {r}: epochs: Input should be a valid integer"),
        ('method = "adore"\nold = "minilm-l6"\ntrain_data = "scifact"\nepochs = 2.5\n', "epochs: Input should be a valid integer"),
        ('method = "adore"\nold = "minilm-l6"\ntrain_data = "scifact"\nepoch = 2\n', "recipe {r}: unknown key 'epoch'"),
        ('method = "dpr"\nold = "minilm-l6"\ntrain_data = "scifact"\n', "method: Input should be 'star', 'adore'"),
        ('old = "minilm-l6"\n', "missing --method"),
        ('method = "adore\n', "is not valid TOML"),
    ],
)
def test_bad_recipe_is_one_error_line(text_env, tmp_path, body, message):  # noqa: F811
    recipe = tmp_path / "r.toml"
    recipe.write_text(body)
    args = ["--recipe", str(recipe), "--gallery", str(text_env.gallery), "--out", str(tmp_path / "m")]
    line = _one_error_line(CliRunner().invoke(retriever, args, catch_exceptions=False))
    assert line.startswith("error: ") and message.format(r=recipe) in line, line
    assert not (tmp_path / "m").exists()


def test_a_flag_error_is_not_blamed_on_the_recipe(text_env, tmp_path):  # noqa: F811
    args = ["--recipe", str(RECIPES[0]), "--gallery", str(text_env.gallery), "--epochs", "0"]
    assert _one_error_line(CliRunner().invoke(retriever, args, catch_exceptions=False)) == \
        "error: epochs: Input should be greater than or equal to 1"


def test_eval_retrieval_on_a_sharded_gallery_scores_as_one_gallery(text_env, tmp_path):  # noqa: F811
    import numpy as np

    from compatret.engine.sharded import ShardedService
    from compatret.store.gallery import Gallery

    rows = Gallery.open(text_env.gallery).vectors_by_id()
    ids = sorted(rows)
    sharded = ShardedService.create(tmp_path / "sharded", 3, model="minilm-l6")
    sharded.add_vectors(np.stack([rows[i][1] for i in ids]), ids=ids)
    scores = []
    for g in (text_env.gallery, tmp_path / "sharded"):
        res = CliRunner().invoke(retrieval, ["--gallery", str(g), "--data", str(text_env.beir), "--json"], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        scores.append(json.loads(res.stdout))
    assert scores[1] == scores[0] and scores[1]["gallery_rows"] == {"minilm-l6": len(ids)}
