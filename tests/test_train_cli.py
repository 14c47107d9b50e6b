"""Recipes and `compatret train image`: validation, a tiny real run on CIFAR-10, resume, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from compatret.cli.main import main
from compatret.core.errors import CompatretError
from compatret.train.image.data import Augment
from compatret.train.image.parallel import train_recipes
from compatret.train.image.recipe import CHECKPOINT_DIR, RECIPE_RECORD, load_recipe, parse_recipe
from compatret.core.lineage import ModelVersion

ROOT = Path(__file__).resolve().parents[1]
TINY = """
id = "c10-{name}"
out = "{out}"
seed = 0
[data]
folder = "cifar10"
classes = [0, {last}]
per_class = 8
[method]
name = "{method}"
{parent}
[model]
width = 0.125
image_size = 16
embed_dim = 16
[train]
epochs = 3
batch_size = 16
"""


def write_recipe(tmp_path: Path, name: str, method: str = "independent", last: int = 3, parent: Path | None = None) -> Path:
    path = tmp_path / f"{name}.toml"
    parent_line = f'parent = "{parent}"' if parent else ""
    path.write_text(TINY.format(name=name, out=tmp_path / name, last=last, method=method, parent=parent_line))
    return path


def test_every_shipped_recipe_is_valid():
    recipes = [load_recipe(p) for p in sorted((ROOT / "training").glob("tinyimagenet100_*.toml"))]  # image recipes (text: test_text_cli)
    assert len(recipes) >= 15
    outs = {r.out for r in recipes}
    for r in recipes:
        assert r.data == "tinyimagenet100" and r.train.epochs >= 1
        assert r.parent in outs if r.method.name in ("bct", "bt2", "oca") else r.parent is None or r.parent in outs


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"train": {"lrr": 0.1}}, "unknown key 'lrr'"),
        ({"train": {"epochs": "ten"}}, "train.epochs: Input should be a valid integer"),
        ({"train": {"epochs": True}}, "train.epochs: Input should be a valid integer"),
        ({"train": {"lr": "0.1"}}, "train.lr: Input should be a valid number"),
        ({"method": {"name": "magic"}}, "not one of"),
        ({"data": {"folder": "cifar10", "classes": [5, 2]}}, "data.classes"),
        ({"model": {"mean": []}}, "lists of numbers"),
        ({"model": {"mean": [0.5, "x", 0.5]}}, "model.mean.1: Input should be a valid number"),
        ({"colour": "blue"}, "unknown key 'colour'"),
    ],
)
def test_bad_recipes_are_named_errors(patch, message):
    doc = {"id": "x", "out": "o", "data": {"folder": "cifar10", "classes": [0, 1]}, "method": {"name": "bt2"}}
    with pytest.raises(CompatretError, match=message):
        parse_recipe({**doc, **patch})


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_train_cli_trains_resumes_and_skips(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("COMPATRET_DATA", str(data_root))
    straight = write_recipe(tmp_path, "straight")
    res = run("train", "image", "--recipe", str(straight), "--device", "cpu", "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["skipped"] is False and out["version"]["id"] == "c10-straight"
    assert not (tmp_path / "straight" / CHECKPOINT_DIR).exists()

    # the same job, killed during its third epoch, then rerun: it resumes and ends identical
    interrupted = write_recipe(tmp_path, "resumed")
    real_augment, calls = Augment.__call__, {"n": 0}

    def dying_augment(*a, **k):
        calls["n"] += 1
        if calls["n"] > 2 * 32 + 5:  # augmented image by image, 32 per epoch: dies in the third
            raise KeyboardInterrupt
        return real_augment(*a, **k)

    monkeypatch.setattr(Augment, "__call__", dying_augment)
    assert run("train", "image", "--recipe", str(interrupted), "--device", "cpu").exit_code != 0
    ckpt = torch.load(tmp_path / "resumed" / CHECKPOINT_DIR / "last.pt", weights_only=False)
    assert ckpt["epoch"] == 2 and (tmp_path / "resumed" / RECIPE_RECORD).exists()
    monkeypatch.setattr(Augment, "__call__", real_augment)
    again = run("train", "image", "--recipe", str(interrupted), "--device", "cpu")
    assert again.exit_code == 0, again.output
    assert "trained c10-resumed" in again.stdout
    a = torch.load(tmp_path / "straight" / "weights.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "weights.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k])

    done = run("train", "image", "--recipe", str(interrupted))
    assert done.exit_code == 0 and "already trained" in done.stdout

    child = write_recipe(tmp_path, "child", method="bt2", last=5, parent=tmp_path / "straight")
    res = run("train", "image", "--recipe", str(child), "--device", "cpu", "--epochs", "1")
    assert res.exit_code == 0, res.output
    v = ModelVersion.load(tmp_path / "child")
    assert v.parent.id == "c10-straight" and v.compat.dims == 16 and v.dim == 16 + 32


def one_error_line(res) -> str:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_train_cli_bad_input_is_one_error_line(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("COMPATRET_DATA", str(data_root))
    bad = tmp_path / "bad.toml"
    bad.write_text('id = "x"\nout = "o"\n[data]\nfolder = "cifar10"\nclasses = [0, 1]\n[method]\nname = "bt2"\n[train]\nepochs = "ten"\n')
    assert "train.epochs" in one_error_line(run("train", "image", "--recipe", str(bad)))
    bad.write_text("id = [unclosed")
    assert "not valid TOML" in one_error_line(run("train", "image", "--recipe", str(bad)))
    assert "not found" in one_error_line(run("train", "image", "--recipe", str(tmp_path / "none.toml")))
    orphan = write_recipe(tmp_path, "orphan", method="bt2", parent=tmp_path / "missing")
    assert "train it first" in one_error_line(run("train", "image", "--recipe", str(orphan)))
    nodata = write_recipe(tmp_path, "nodata")
    nodata.write_text(nodata.read_text().replace('"cifar10"', '"no-such-set"'))
    assert "not found" in one_error_line(run("train", "image", "--recipe", str(nodata)))


def test_train_recipes_runs_parents_first_two_at_a_time(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("COMPATRET_DATA", str(data_root))
    old = load_recipe(write_recipe(tmp_path, "old"))
    recipes = {
        "child": load_recipe(write_recipe(tmp_path, "child", method="bt2", last=5, parent=tmp_path / "old")),
        "old": old,
        "other": load_recipe(write_recipe(tmp_path, "other", last=5)),
    }
    seen: list[str] = []
    done = train_recipes(recipes, jobs=2, device="cpu", on_done=lambda name, _: seen.append(name))
    assert sorted(done) == sorted(recipes) and seen.index("old") < seen.index("child")
    assert not any(o.skipped for o in done.values())
    child = ModelVersion.load(tmp_path / "child")
    assert child.parent is not None and child.parent.id == "c10-old" and child.dim == 16 + 32
    again = train_recipes(recipes, jobs=2, device="cpu")
    assert all(o.skipped for o in again.values())


def test_train_recipes_refuses_cycles_and_missing_parents(tmp_path):
    a = load_recipe(write_recipe(tmp_path, "a", method="bt2", parent=tmp_path / "b"))
    b = load_recipe(write_recipe(tmp_path, "b", method="bt2", parent=tmp_path / "a"))
    with pytest.raises(CompatretError, match="cycle"):
        train_recipes({"a": a, "b": b}, jobs=2)
    with pytest.raises(CompatretError, match="train it first"):
        train_recipes({"a": a}, jobs=2)
    with pytest.raises(CompatretError, match="same model folder"):
        train_recipes({"a": a, "again": a}, jobs=2)
    with pytest.raises(CompatretError, match="jobs"):
        train_recipes({}, jobs=0)


def test_train_cli_trains_a_family_parents_first(tmp_path, data_root, monkeypatch):
    monkeypatch.setenv("COMPATRET_DATA", str(data_root))
    old = write_recipe(tmp_path, "old")
    child = write_recipe(tmp_path, "child", method="bt2", last=5, parent=tmp_path / "old")
    res = run("train", "image", "--recipe", str(child), "--recipe", str(old), "--device", "cpu", "--json")
    assert res.exit_code == 0, res.output
    records = json.loads(res.stdout)
    assert [r["version"]["id"] for r in records] == ["c10-old", "c10-child"]
    assert ModelVersion.load(tmp_path / "child").parent.id == "c10-old"
    both = ["--recipe", str(old), "--recipe", str(child)]
    assert "single --recipe" in one_error_line(run("train", "image", *both, "--out", str(tmp_path / "x")))
    assert "jobs" in one_error_line(run("train", "image", *both, "--jobs", "0"))
