"""A rollout as users live it: v1 -> BT² v2 on a real gallery (digit images), v1 and v2 clients
querying before, during and after the backfill, and `index info --json` telling the truth each time."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from compatret.encoders import load_encoder
from compatret.engine.backfill import backfill
from compatret.engine.service import Service
from compatret.core.transforms import normalize


@pytest.fixture(scope="module")
def bt2_model(digit_models, tmp_path_factory) -> str:
    """v2: BT² over v1 (16 dims) with 8 extra dims: prefix(16) rule."""
    from compatret.data.images import load_digits_splits
    from compatret.encoders.image import ImageModelSpec
    from compatret.train.image.methods import MethodSpec, fit_image_version
    from compatret.train.image.trainer import TrainConfig

    root = tmp_path_factory.mktemp("bt2")
    train, _ = load_digits_splits()
    spec = ImageModelSpec(width=0.125, in_channels=1, image_size=8, embed_dim=16, mean=(0.3,), std=(0.4,))
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.1, crop_padding=1, flip=False, progress=False)
    fit_image_version("v2", MethodSpec("bt2", num_classes=10, extra_dims=8), train, spec, cfg, root / "v2", parent_dir=digit_models["v1"])
    return str(root / "v2")


def expected_top(q: np.ndarray, stored: dict[str, tuple[str, np.ndarray]], k: int) -> list[tuple[str, float]]:
    """Brute force over the stored rows: each row compared in the dims it shares with the query (v1: 16; v2 rows with v2 queries: 24)."""
    scores = {}
    for i, (_, vec) in stored.items():
        d = min(len(q), len(vec))
        scores[i] = float(normalize(q[None, :d])[0] @ normalize(vec[None, :d])[0])
    return sorted(scores.items(), key=lambda t: -t[1])[:k]


def table_counts(directory) -> dict[str, int]:
    """Rows per model version counted straight from the Lance table."""
    import lance

    col = lance.dataset(str(directory / "gallery.lance")).to_table(columns=["model_version"]).column("model_version").to_pylist()
    return {v: col.count(v) for v in sorted(set(col))}


def test_rollout_v1_and_v2_clients_through_a_backfill(digit_models, bt2_model, tmp_path):
    items, probes = digit_models["items"][:120], [it["image"] for it in digit_models["items"][120:140]]
    g = Service.create(tmp_path / "g", model=digit_models["v1"])
    g.add_items(items, progress=False)
    reference = Service.create(tmp_path / "ref", model=digit_models["v1"])  # what a v1-only gallery answers
    reference.add_items(items, progress=False)
    g.upgrade(bt2_model)
    clients = {"v1": load_encoder(digit_models["v1"]).encode_queries(probes), "v2": load_encoder(bt2_model).encode_queries(probes)}
    assert clients["v1"].shape[1] == 16 and clients["v2"].shape[1] == 24
    ref_scores = [dict(zip(r.ids, r.scores)) for r in reference.query(images=probes, k=120)]
    for stage, fraction in (("before", None), ("middle", 0.5), ("after", 1.0)):
        if fraction is not None:
            backfill(Service.open(tmp_path / "g"), fraction=fraction, batch_size=16, progress=False)
        s = Service.open(tmp_path / "g")
        stored = s.gallery.vectors_by_id()
        on_v2 = {i for i, (v, _) in stored.items() if v == "v2"}
        assert len(on_v2) == {"before": 0, "middle": 60, "after": 120}[stage]
        for client, q in clients.items():
            results = s.query(images=probes, model=client if client == "v1" else None, k=10)  # v2 is the serving model
            for n, res in enumerate(results):
                want = expected_top(q[n], stored, 10)
                assert res.ids == [i for i, _ in want], (stage, client)
                np.testing.assert_allclose(res.scores, [sc for _, sc in want], atol=1e-5)
                if client == "v1":  # on rows still holding v1 vectors, exactly the v1-only gallery's scores
                    for i, sc in zip(res.ids, res.scores):
                        if i not in on_v2:
                            assert sc == pytest.approx(ref_scores[n][i], abs=1e-5)
        info = json.loads(subprocess.run([sys.executable, "-m", "compatret", "index", "info", str(tmp_path / "g"), "--json"],
                                         capture_output=True, text=True, check=True).stdout)
        counts = table_counts(tmp_path / "g")
        assert info["rows_by_version"] == counts and info["rows"] == sum(counts.values()) == 120, stage
        assert info["serving_model"] == "v2" and [m["id"] for m in info["lineage"]] == ["v2", "v1"]
        # each group as the serving model reads it: v1 rows through 16 dims, v2 rows whole
        assert {g["model"]: (g["rows"], g["dim"], g["plan_dims"]) for g in info["groups"]} == \
            {v: (n, {"v1": 16, "v2": 24}[v], {"v1": 16, "v2": 24}[v]) for v, n in counts.items()}
