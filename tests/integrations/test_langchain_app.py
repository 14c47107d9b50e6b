"""compatret's LangChain store beyond the standard suite: a model upgrade reaching a running app,
the fingerprint that keeps two embedding spaces apart, exact metadata filters, MMR."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding, Embeddings

import compatret
from compatret.core.errors import CompatretError
from compatret.integrations.langchain import CompatretVectorStore

ROOT = Path(__file__).resolve().parents[2]


def test_the_rag_example_moves_a_running_app_to_an_adapted_model_then_backfills(tmp_path):
    """examples/langchain_rag.py end to end on 300 SciFact abstracts: the app's store, created once,
    answers after the upgrade (made by another process) as a freshly started app does, so its
    queries are embedded by the new model; the backfill leaves every row on it."""
    env = {**os.environ, "COMPATRET_DATA": os.environ.get("COMPATRET_DATA", str(ROOT.parent / "shared" / "data"))}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "langchain_rag.py"), "--work", str(tmp_path), "--docs", "300", "--json"],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    r = json.loads(done.stdout)
    assert r["built"] == {"rows": 300, "serving": "minilm-l3"}
    assert r["after_serving"] == r["upgrade"]["serving"] == r["adapt"]["model_id"] != "minilm-l3"
    assert r["after"] == r["fresh_app"]
    assert r["after"] != r["before"]  # the new model ranks differently: the comparison above means something
    assert r["backfill"]["done"] == 300 and r["backfill"]["remaining"] == 0
    assert compatret.open(tmp_path / "gallery").info()["rows_by_version"] == {r["after_serving"]: 300}


def test_a_store_refuses_an_embeddings_object_other_than_the_one_that_made_it(tmp_path):
    path = tmp_path / "g"
    made = CompatretVectorStore.create(path, embedding=DeterministicFakeEmbedding(size=8))
    made.add_texts(["alpha", "beta"], ids=["a", "b"])
    version = compatret.open(path).engine.gallery.version
    assert CompatretVectorStore.open(path, DeterministicFakeEmbedding(size=8)).similarity_search("alpha", k=1)[0].id == "a"
    with pytest.raises(CompatretError, match="refusing to mix"):
        CompatretVectorStore.open(path, _Shifted(size=8))
    with pytest.raises(CompatretError, match="refusing to mix"):
        CompatretVectorStore.open(path, DeterministicFakeEmbedding(size=9))
    with pytest.raises(CompatretError, match="give the Embeddings object"):
        CompatretVectorStore.open(path)
    assert compatret.open(path).engine.gallery.version == version  # refusals write nothing


def test_a_gallery_with_its_own_model_refuses_an_outside_embeddings_object(tmp_path):
    CompatretVectorStore.create(tmp_path / "g", model="minilm-l3")
    with pytest.raises(CompatretError, match="embeds with its own model"):
        CompatretVectorStore.open(tmp_path / "g", DeterministicFakeEmbedding(size=384))


def test_a_metadata_filter_is_exact_even_when_its_matches_rank_last(tmp_path):
    store = CompatretVectorStore.create(tmp_path / "g", embedding=DeterministicFakeEmbedding(size=16))
    texts = [f"text {i}" for i in range(200)]
    store.add_texts(texts, [{"group": "rare" if i % 50 == 7 else "common", "i": i} for i in range(200)], ids=[str(i) for i in range(200)])
    q = store.embeddings.embed_query("a query")
    scores = np.asarray(store.embeddings.embed_documents(texts)) @ np.asarray(q)
    rare = sorted((i for i in range(200) if i % 50 == 7), key=lambda i: -scores[i] / np.linalg.norm(store.embeddings.embed_documents([texts[i]])[0]))
    found = store.similarity_search_by_vector(q, k=3, filter={"group": "rare"})
    assert [d.id for d in found] == [str(i) for i in rare[:3]]
    assert all(d.metadata["group"] == "rare" for d in found)
    assert store.similarity_search_by_vector(q, k=10, filter=lambda m: m["i"] in (3, 4)) != []
    assert len(store.similarity_search_by_vector(q, k=10, filter={"group": "none"})) == 0


def test_mmr_leaves_out_a_near_duplicate_that_plain_search_ranks_second(tmp_path):
    store = CompatretVectorStore.create(tmp_path / "g", embedding=_Table(size=3))
    store.add_texts(["x", "x again", "y"], ids=["x", "dup", "y"])
    q = [1.0, 0.05, 0.0]
    assert [d.id for d in store.similarity_search_by_vector(q, k=2)] == ["x", "dup"]
    assert [d.id for d in store.max_marginal_relevance_search_by_vector(q, k=2, fetch_k=3, lambda_mult=0.25)] == ["x", "y"]
    assert [d.id for d in store.max_marginal_relevance_search("x", k=2, fetch_k=3, lambda_mult=0.25)] == ["x", "y"]


def test_a_store_works_the_same_on_a_sharded_gallery(tmp_path):
    emb = DeterministicFakeEmbedding(size=6)
    store = CompatretVectorStore(compatret.create(tmp_path / "g", dim=6, version_id=_fp(emb), modality="text", shards=3), emb)
    store.add_documents([Document(page_content=t, metadata={"n": n}, id=f"d{n}") for n, t in enumerate(["foo", "bar", "baz", "qux"])])
    store.add_texts(["bar, updated"], [{"n": 1}], ids=["d1"])
    assert [d.page_content for d in store.get_by_ids(["d1", "d0", "zz"])] == ["bar, updated", "foo"]
    assert store.similarity_search("qux", k=1)[0].id == "d3"
    store.delete(["d3", "missing"])
    assert store.get_by_ids(["d3"]) == [] and len(store.index) == 3


def _fp(emb: Embeddings) -> str:
    from compatret.integrations.langchain import fingerprint

    return fingerprint(emb)[0]


class _Shifted(DeterministicFakeEmbedding):
    """Another model of the same size: the same vectors, one component moved."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [[v + (0.5 if n == 0 else 0.0) for n, v in enumerate(e)] for e in super().embed_documents(texts)]

    def embed_query(self, text: str) -> list[float]:
        return self.embed_documents([text])[0]


class _Table(Embeddings):
    """Fixed vectors: x and its near-duplicate point one way, y another."""

    def __init__(self, size: int) -> None:
        self.size = size

    def _one(self, text: str) -> list[float]:
        return {"x": [1.0, 0.0, 0.0], "x again": [0.99, 0.1, 0.0], "y": [0.6, 0.0, 0.8]}.get(text, [0.3, 0.3, 0.9])

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._one(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._one(text)
