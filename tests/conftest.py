"""Shared fixtures: the data folder (COMPATRET_DATA) and small real subsets of it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("LANCEDB_LOG", "error")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from compatret.config import data_dir  # noqa: E402


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
