"""Shared fixtures: the data folder (COMPATRET_DATA) and small real subsets of it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("LANCEDB_LOG", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from compatret.core.config import data_dir

# the framework suites run apart, from their own root (tests/integrations/pytest.ini; see the README)
collect_ignore = ["integrations"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under mutmut (eval/mutation/run.py), a mutant's tests fastest first: mutmut names them in
    no particular order and stops at the first failure, so a mutant one quick test kills is not
    kept waiting for the slow ones. Each module's tests stay together (a module's fixtures are set
    up once), the modules ordered by their fastest test; the verdicts are the same in any order."""
    stats = Path("mutmut-stats.json")  # mutmut runs the tests from mutants/, where it keeps their durations
    if "MUTANT_UNDER_TEST" not in os.environ or not stats.exists():
        return
    took = json.loads(stats.read_text()).get("duration_by_test", {})
    fastest: dict[str, float] = {}
    for item in items:
        fastest[item.module.__name__] = min(fastest.get(item.module.__name__, float("inf")), took.get(item.nodeid, float("inf")))
    items.sort(key=lambda item: (fastest[item.module.__name__], item.module.__name__, took.get(item.nodeid, float("inf"))))


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = data_dir()
    if not root.exists():
        pytest.fail(f"shared data not found at {root}; set COMPATRET_DATA")
    return root


@pytest.fixture(scope="session")
def scifact_subset(data_root: Path) -> dict:
    """300 SciFact abstracts (with the documents of the first test queries) and those queries."""
    root = data_root / "scifact"
    queries = {q["_id"]: q["text"] for q in map(json.loads, (root / "queries.jsonl").open())}
    qrels: dict[str, set[str]] = {}
    for line in list((root / "qrels" / "test.tsv").open())[1:]:
        qid, did, score = line.split()
        if int(score) > 0:
            qrels.setdefault(qid, set()).add(did)
    chosen = list(qrels)[:20]
    wanted = set().union(*(qrels[q] for q in chosen))
    docs = []
    for d in map(json.loads, (root / "corpus.jsonl").open()):
        if d["_id"] in wanted or len(docs) < 300 - len(wanted):
            docs.append({"id": d["_id"], "title": d["title"], "text": d["text"]})
    return {"docs": docs, "queries": {q: queries[q] for q in chosen}, "qrels": {q: qrels[q] for q in chosen}}


MODELS_CACHE_ENV = "COMPATRET_TEST_MODELS"  # a folder the digit models are trained into once and then read from


@pytest.fixture(scope="session")
def digit_models(tmp_path_factory) -> dict:
    """Two real, tiny image models on the bundled digits: v1 and a BCT-compatible v2 (seconds)."""
    from filelock import FileLock

    from compatret.data.images import load_digits_splits
    from compatret.encoders.image import ImageModelSpec
    from compatret.train.image.methods import MethodSpec, fit_image_version
    from compatret.train.image.trainer import TrainConfig

    train, test = load_digits_splits()
    # the mutation run forks a fresh test process per mutant: it trains the models once, in this folder
    kept = os.environ.get(MODELS_CACHE_ENV)
    root = Path(kept) if kept else tmp_path_factory.mktemp("digit_models")
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".training.lock")):
        if not (root / ".trained").is_file():
            spec = ImageModelSpec(width=0.125, in_channels=1, image_size=8, embed_dim=16, mean=(0.3,), std=(0.4,))
            cfg = TrainConfig(epochs=3, batch_size=64, lr=0.1, crop_padding=1, flip=False, progress=False)
            fit_image_version("v1", MethodSpec("independent"), train.subset(train.labels < 7), spec, cfg, root / "v1")
            bct = MethodSpec("bct", num_classes=10, align_weight=1.0)
            fit_image_version("v2", bct, train, spec, cfg, root / "v2", parent_dir=root / "v1")
            (root / ".trained").touch()
    items = [{"id": f"d{i}", "image": img, "metadata": {"label": int(y)}} for i, (img, y) in enumerate(zip(test.images, test.labels))]
    return {"v1": str(root / "v1"), "v2": str(root / "v2"), "items": items}
