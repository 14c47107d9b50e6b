"""`compatret eval compat` on tiny real models (digits): matrix through the lineage, JSON, heatmaps, ECC/AC."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from compatret.cli.main import main
from compatret.data.images import load_digits_splits
from compatret.encoders import load_encoder
from compatret.encoders.image import ImageModelSpec
from compatret.evaluation.compat_matrix import CompatMatrix
from compatret.evaluation.compat_metrics import retrieval_scores
from compatret.train.image.methods import MethodSpec, fit_image_version
from compatret.train.image.trainer import TrainConfig
from compatret.core.lineage import ModelVersion
from compatret.core.transforms import normalize

SPEC = ImageModelSpec(width=0.125, in_channels=1, image_size=8, embed_dim=16, mean=(0.3,), std=(0.4,))
CFG = TrainConfig(epochs=4, batch_size=32, lr=0.05, crop_padding=1, flip=False, progress=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """Digits as a parquet folder, and an old model with a BT² and an independent successor."""
    root = tmp_path_factory.mktemp("eval")
    train, test = load_digits_splits()
    train = train.head_per_class(40)
    data = root / "digits"
    data.mkdir()
    pq.write_table(pa.table({"image": test.images, "label": test.labels.astype(np.int16)}), data / "test.parquet")
    models = root / "models"
    fit_image_version("old", MethodSpec("independent"), train.subset(train.labels < 7), SPEC, CFG, models / "old")
    fit_image_version("bt2", MethodSpec("bt2", extra_dims=8), train, SPEC, CFG, models / "bt2", parent_dir=models / "old")
    fit_image_version("indep", MethodSpec("independent"), train, SPEC, TrainConfig(**{**CFG.__dict__, "seed": 1}), models / "indep")
    return {"data": data, "old": models / "old", "bt2": models / "bt2", "indep": models / "indep", "root": root}


def evaluate(setup, *args: str) -> dict:
    res = CliRunner().invoke(main, ["eval", "compat", "--data", str(setup["data"]), "--json", *args])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def test_eval_compat_scores_the_prefix_and_writes_json_and_heatmaps(setup):
    out = setup["root"] / "report"
    report = evaluate(setup, "--models", str(setup["old"]), str(setup["bt2"]), "--out", str(out))
    assert [m["id"] for m in report["models"]] == ["old", "bt2"]
    top1 = np.array(report["top1"], dtype=float)
    assert np.isnan(top1[0, 1]) and report["queries"] == 540
    assert top1[0, 0] > 40 and top1[1, 1] > 40  # real retrieval on digits; chance is ~10
    pair = next(p for p in report["pairs"] if p["query"] == "bt2" and p["gallery"] == "old")
    assert pair["compared"] == "lineage: 16 shared dims"
    assert pair["ecc_top1"] == (top1[1, 0] > top1[0, 0])
    assert report["ac"]["top1"] == float(pair["ecc_top1"])
    assert report["am"]["top1"] == pytest.approx(np.nanmean(top1[np.tril_indices(2)]), abs=1e-3)

    # the cell equals a hand-made prefix comparison of the two encoders
    from compatret.data.images import load_parquet_split

    test = load_parquet_split(setup["data"], "test")
    new = load_encoder(str(setup["bt2"])).encode_items(test.images)[:, :16]
    old = load_encoder(str(setup["old"])).encode_items(test.images)
    by_hand = retrieval_scores(normalize(new), old, test.labels, test.labels, leave_one_out=True)["top1"]
    assert pair["top1"] == pytest.approx(by_hand, abs=1e-3)

    assert json.loads((out / "compat.json").read_text())["top1"] == report["top1"]
    for name in ("compat_top1.png", "compat_map.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unrelated_models_are_refused_unless_raw(setup):
    out = str(setup["root"] / "r2")
    refused = evaluate(setup, "--models", str(setup["old"]), str(setup["indep"]), "--out", out, "--per-class", "20")
    assert refused["queries"] == 200
    assert refused["top1"][1][0] is None and refused["ac"]["top1"] == 0.0 and refused["am"]["top1"] is None
    raw = evaluate(setup, str(setup["old"]), str(setup["indep"]), "--raw-unrelated", "--out", out, "--per-class", "20")
    pair = next(p for p in raw["pairs"] if p["gallery"] == "old" and p["query"] == "indep")
    assert pair["compared"] == "raw: no lineage" and pair["top1"] < raw["top1"][0][0]


def test_eval_compat_bad_input_is_one_error_line(setup, tmp_path):
    for args, message in [
        ([], "give the model folders"),
        (["--models", str(tmp_path)], "not a compatret model folder"),
        (["--models", str(setup["old"]), "--split", "nope"], "no nope.parquet"),
    ]:
        res = CliRunner().invoke(main, ["eval", "compat", "--data", str(setup["data"]), *args])
        lines = [line for line in res.stderr.splitlines() if line.strip()]
        assert res.exit_code == 2 and len(lines) == 1 and message in lines[0], res.output


def test_refused_pair_counts_as_incompatible():
    v = [ModelVersion(f"v{i}", 4, "image") for i in range(3)]
    nan = float("nan")
    m = np.array([[50.0, nan, nan], [nan, 60.0, nan], [55.0, 40.0, 70.0]])
    summary = CompatMatrix(v, {"top1": m, "map": m}, {}, 10).summary("top1")
    assert summary["ecc"].tolist() == [[False] * 3, [False] * 3, [True, False, False]]
    assert summary["ac"] == pytest.approx(1 / 3) and summary["am"] is None
