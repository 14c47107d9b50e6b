"""A small real text setup shared by the tests/test_text_*.py files: ~300 SciFact documents.

Imported as a fixture by each module; built once per session on disk (the gallery holds
minilm-l6 vectors of the documents, embedded at a short length to stay fast).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

SEQ = 64


@dataclass(frozen=True)
class TextEnv:
    beir: Path
    gallery: Path
    qrels: dict[str, set[str]]


def _write_beir(root: Path, subset: dict) -> None:
    (root / "qrels").mkdir(parents=True)
    with (root / "corpus.jsonl").open("w") as fh:
        for d in subset["docs"]:
            fh.write(json.dumps({"_id": d["id"], "title": d["title"], "text": d["text"]}) + "\n")
    with (root / "queries.jsonl").open("w") as fh:
        for q, text in subset["queries"].items():
            fh.write(json.dumps({"_id": q, "text": text}) + "\n")
    rows = "".join(f"{q}\t{d}\t1\n" for q, ds in subset["qrels"].items() for d in sorted(ds))
    for split in ("train", "test"):
        (root / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)


@pytest.fixture(scope="session")
def text_env(scifact_subset: dict, tmp_path_factory: pytest.TempPathFactory) -> TextEnv:
    base = tmp_path_factory.getbasetemp() / "text_env"
    env = TextEnv(base / "beir", base / "gallery", scifact_subset["qrels"])
    if (env.gallery / "gallery.lance").exists():
        return env
    from compatret.encoders import load_encoder
    from compatret.engine.service import Service

    _write_beir(env.beir, scifact_subset)
    enc = load_encoder("minilm-l6")
    enc.model.max_seq_length = SEQ  # type: ignore[attr-defined]
    docs = scifact_subset["docs"]
    vecs = enc.encode_items([{"title": d["title"], "text": d["text"]} for d in docs], batch_size=64)
    service = Service.create(env.gallery, model="minilm-l6")
    service.add_vectors(np.asarray(vecs), ids=[d["id"] for d in docs])
    return env
