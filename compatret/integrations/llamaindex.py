"""compatret as a LlamaIndex vector store (the `llamaindex` extra).

The gallery's own models embed: the store embeds each node's text with the serving model as it
adds it, and embeds each query itself (`is_embedding_query = False`, so LlamaIndex sends the
query text), so an `index upgrade` from any process changes the query model at the next query,
with no restart and no backfill. `VectorStoreIndex` still runs its `embed_model` over new nodes:
give it `CompatretEmbedding(store)`, the same serving model (those vectors are not stored).

    store = CompatretVectorStore.create("gallery", model="minilm-l6")
    index = VectorStoreIndex.from_documents(docs, storage_context=StorageContext.from_defaults(vector_store=store),
                                            embed_model=CompatretEmbedding(store))
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import BaseNode, MetadataMode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
from pydantic import PrivateAttr

import compatret
from compatret.api import Index
from compatret.core.errors import CompatretError

Predicate = Callable[[dict[str, Any]], bool]


class CompatretVectorStore(BasePydanticVectorStore):
    """A compatret gallery (single or sharded) as a LlamaIndex vector store."""

    stores_text: bool = True
    is_embedding_query: bool = False  # the store embeds the query text with the gallery's serving model
    flat_metadata: bool = False
    _index: Index = PrivateAttr()

    def __init__(self, index: Index | str | Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._index = index if isinstance(index, Index) else compatret.open(index)
        if self._index.meta.serving_source is None:
            raise CompatretError(
                f"model {self._index.serving!r} has no weights in this gallery: the LlamaIndex store embeds with the gallery's models"
            )

    @classmethod
    def create(cls, path: str | Path, model: str, **options: Any) -> CompatretVectorStore:
        """A new gallery at `path` served by a compatret `model` (an alias or model folder)."""
        return cls(compatret.create(path, model, **options))

    @classmethod
    def class_name(cls) -> str:
        return "CompatretVectorStore"

    @property
    def client(self) -> Index:
        return self._index

    # ---- writes ----------------------------------------------------------------------
    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Store nodes (id, text, metadata incl. ref_doc_id), embedded by the serving model; a node
        stored under its id with other content is replaced."""
        if not nodes:
            return []
        texts = [n.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]
        metadatas = [node_to_metadata_dict(n, remove_text=True, flat_metadata=self.flat_metadata) for n in nodes]
        ids = [n.node_id for n in nodes]
        self._index.upsert(texts, ids, metadatas)
        return ids

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of document `ref_doc_id`."""
        self._index.delete(self._index.ids_where({"ref_doc_id": ref_doc_id}), missing_ok=True)

    def delete_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None, **delete_kwargs: Any) -> None:
        self._index.delete(self._ids(node_ids, filters), missing_ok=True)

    def clear(self) -> None:
        self._index.delete(self._index.ids_where(lambda _: True), missing_ok=True)

    # ---- reads -----------------------------------------------------------------------
    def get_nodes(self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None) -> list[BaseNode]:
        return [_node(r) for r in self._index.get(self._ids(node_ids, filters))]

    def _ids(self, node_ids: list[str] | None, filters: MetadataFilters | None) -> list[str]:
        if node_ids is not None and filters is None:
            return list(node_ids)
        keep = _predicate(filters) if filters is not None else (lambda _: True)
        found = self._index.ids_where(keep)
        return found if node_ids is None else [i for i in found if i in set(node_ids)]

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """Top-k by cosine similarity, the query text embedded by the serving model (or the given
        embedding, read as the serving model's); filters, doc_ids and node_ids narrow it exactly."""
        if query.mode != VectorStoreQueryMode.DEFAULT:
            raise CompatretError(f"query mode {query.mode.value!r} is not supported: compatret ranks by dense similarity (mode 'default')")
        if len(self._index) == 0:
            return VectorStoreQueryResult(nodes=[], similarities=[], ids=[])
        asked: dict[str, Any] = {"texts": [query.query_str]} if query.query_str is not None else {}
        if not asked:
            if query.query_embedding is None:
                raise CompatretError("a query needs query_str or query_embedding")
            asked = {"vectors": np.asarray([query.query_embedding], dtype=np.float32)}
        r = self._index.query(**asked, k=query.similarity_top_k, where=_narrowing(query), include_payload=True)[0]
        nodes = [_node({**p, "id": i}) for i, p in zip(r.ids, r.payloads or [])]
        return VectorStoreQueryResult(nodes=nodes, similarities=list(r.scores), ids=list(r.ids))


class CompatretEmbedding(BaseEmbedding):
    """The gallery's serving model as a LlamaIndex embed model (whichever model serves at each call)."""

    _index: Index = PrivateAttr()

    def __init__(self, store: CompatretVectorStore | Index, **kwargs: Any) -> None:
        super().__init__(model_name="compatret-serving", **kwargs)
        self._index = store.client if isinstance(store, CompatretVectorStore) else store

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._index.encoder().encode_queries([query])[0].tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._index.encoder().encode_items(texts).tolist()


def _node(row: dict[str, Any]) -> BaseNode:
    return metadata_dict_to_node(dict(row.get("metadata") or {}), text=row.get("text") or "")


def _narrowing(query: VectorStoreQuery) -> Predicate | None:
    """One predicate on a row's metadata from the query's filters, doc_ids and node_ids."""
    parts: list[Predicate] = []
    if query.filters is not None:
        parts.append(_predicate(query.filters))
    if query.doc_ids:  # None or [] (what a retriever sends by default): no restriction
        docs = set(query.doc_ids)
        parts.append(lambda m: m.get("ref_doc_id") in docs)
    if query.node_ids:
        wanted = set(query.node_ids)
        parts.append(lambda m: json.loads(m.get("_node_content") or "{}").get("id_") in wanted)
    return (lambda m: all(p(m) for p in parts)) if parts else None


COMPARE: dict[FilterOperator, Callable[[Any, Any], bool]] = {
    FilterOperator.EQ: operator.eq,
    FilterOperator.NE: operator.ne,
    FilterOperator.GT: operator.gt,
    FilterOperator.LT: operator.lt,
    FilterOperator.GTE: operator.ge,
    FilterOperator.LTE: operator.le,
    FilterOperator.IN: lambda have, v: have in v,
    FilterOperator.NIN: lambda have, v: have not in v,
    FilterOperator.ANY: lambda have, v: isinstance(have, list) and any(x in have for x in v),
    FilterOperator.ALL: lambda have, v: isinstance(have, list) and all(x in have for x in v),
    FilterOperator.CONTAINS: lambda have, v: isinstance(have, list) and v in have,
    FilterOperator.TEXT_MATCH: lambda have, v: isinstance(have, str) and str(v) in have,
    FilterOperator.TEXT_MATCH_INSENSITIVE: lambda have, v: isinstance(have, str) and str(v).lower() in have.lower(),
}


def _predicate(filters: MetadataFilters) -> Predicate:
    """MetadataFilters (nested, and/or/not) as a predicate on stored metadata; every operator
    LlamaIndex defines is supported; a key a row lacks fails every comparison but is_empty."""
    tests: list[Predicate] = [_predicate(f) if isinstance(f, MetadataFilters) else _one(f) for f in filters.filters]
    condition = filters.condition or FilterCondition.AND
    if condition == FilterCondition.OR:
        return lambda m: any(t(m) for t in tests)
    if condition == FilterCondition.NOT:
        return lambda m: not any(t(m) for t in tests)
    return lambda m: all(t(m) for t in tests)


def _one(f: MetadataFilter) -> Predicate:
    op = FilterOperator(f.operator)
    if op == FilterOperator.IS_EMPTY:
        return lambda m: m.get(f.key) in (None, [], "")
    compare = COMPARE[op]

    def test(m: dict[str, Any]) -> bool:
        if f.key not in m or m[f.key] is None:
            return False
        try:
            return bool(compare(m[f.key], f.value))
        except TypeError:  # e.g. a number compared with text: not a match
            return False

    return test
