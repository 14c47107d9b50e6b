"""compatret's LlamaIndex store end to end with a real VectorStoreIndex over SciFact abstracts:
ingest documents, retrieve (with metadata filters), upgrade the gallery's model under the running
index, retrieve again, delete a document."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters

import compatret
from compatret.core.errors import CompatretError
from compatret.integrations.llamaindex import CompatretEmbedding, CompatretVectorStore

QUESTION = "Does vitamin D supplementation lower the risk of fractures?"


def scifact(n: int) -> list[Document]:
    corpus = Path(os.environ.get("COMPATRET_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"), "scifact", "corpus.jsonl")
    docs = []
    for line in corpus.open():
        d = json.loads(line)
        docs.append(Document(text=d["text"], doc_id=d["_id"], metadata={"title": d["title"], "half": "a" if len(docs) % 2 else "b", "n": len(docs)}))
        if len(docs) == n:
            return docs
    return docs


def ids(nodes) -> list[str]:
    return [n.node.node_id for n in nodes]


def test_a_vector_store_index_ingests_retrieves_upgrades_and_retrieves_again(tmp_path):
    store = CompatretVectorStore.create(tmp_path / "g", "minilm-l3")
    index = VectorStoreIndex.from_documents(
        scifact(200), storage_context=StorageContext.from_defaults(vector_store=store), embed_model=CompatretEmbedding(store)
    )
    gallery = compatret.open(tmp_path / "g")
    assert len(gallery) >= 200  # a node per abstract, more where the splitter cut one
    retriever = index.as_retriever(similarity_top_k=5)
    before = retriever.retrieve(QUESTION)
    direct = gallery.query([QUESTION], k=5)[0]
    assert ids(before) == direct.ids and [n.score for n in before] == pytest.approx(direct.scores, abs=1e-5)
    assert all(n.node.ref_doc_id and n.node.metadata["title"] for n in before)  # the node comes back whole

    only_a = index.as_retriever(similarity_top_k=5, filters=MetadataFilters(filters=[MetadataFilter(key="half", value="a")])).retrieve(QUESTION)
    assert len(only_a) == 5 and all(n.node.metadata["half"] == "a" for n in only_a)
    assert ids(only_a) == gallery.query([QUESTION], k=5, where={"half": "a"})[0].ids

    adapted = gallery.adapt("minilm-l6", tmp_path / "adapter", kind="affine", force=True)
    compatret.open(tmp_path / "g").upgrade(adapted["model"])  # another handle (as another process would): the index is not told
    after = retriever.retrieve(QUESTION)
    fresh = compatret.open(tmp_path / "g").query([QUESTION], k=5)[0]
    assert ids(after) == fresh.ids and ids(after) != ids(before)  # the running index now asks with the adapted model

    gone = after[0].node.ref_doc_id
    index.delete_ref_doc(gone)
    assert gone not in {n.node.ref_doc_id for n in retriever.retrieve(QUESTION)}
    assert compatret.open(tmp_path / "g").ids_where({"ref_doc_id": gone}) == []


def test_filters_combine_every_operator_exactly(tmp_path):
    store = CompatretVectorStore.create(tmp_path / "g", "minilm-l3")
    VectorStoreIndex.from_documents(scifact(40), storage_context=StorageContext.from_defaults(vector_store=store), embed_model=CompatretEmbedding(store))
    from llama_index.core.vector_stores.types import VectorStoreQuery

    def found(filters: MetadataFilters) -> set[int]:
        r = store.query(VectorStoreQuery(query_str=QUESTION, similarity_top_k=40, filters=filters))
        return {n.metadata["n"] for n in r.nodes}

    f = lambda key, value, op: MetadataFilter(key=key, value=value, operator=op)  # noqa: E731
    assert found(MetadataFilters(filters=[f("n", 30, FilterOperator.GTE)])) == set(range(30, 40))
    assert found(MetadataFilters(filters=[f("n", 3, FilterOperator.LT), f("n", 1, FilterOperator.NE)])) == {0, 2}
    assert found(MetadataFilters(filters=[f("n", [5, 7], FilterOperator.IN), f("n", 38, FilterOperator.GT)], condition=FilterCondition.OR)) == {5, 7, 39}
    assert found(MetadataFilters(filters=[f("half", "a", FilterOperator.EQ)], condition=FilterCondition.NOT)) == set(range(0, 40, 2))
    assert found(MetadataFilters(filters=[f("missing", 1, FilterOperator.EQ)])) == set()
    r = store.query(VectorStoreQuery(query_str=QUESTION, similarity_top_k=3, doc_ids=[d.doc_id for d in scifact(40)[10:12]]))
    assert {n.metadata["n"] for n in r.nodes} == {10, 11}


def test_a_gallery_of_bare_vectors_is_refused(tmp_path):
    compatret.create(tmp_path / "g", dim=4, version_id="ext").add(vectors=np.eye(4, dtype=np.float32), ids=list("abcd"))
    with pytest.raises(CompatretError, match="no weights"):
        CompatretVectorStore(tmp_path / "g")
