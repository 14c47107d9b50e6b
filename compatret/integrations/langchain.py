"""compatret as a LangChain `VectorStore` (the `langchain` extra).

Two ways to embed. With the gallery's own models (`CompatretVectorStore.open(path)`): the store
embeds texts and queries with the gallery's serving model, so an `index upgrade` (any process)
changes the query model of a running application at its next query, with no restart and no
backfill. With any LangChain `Embeddings` (`CompatretVectorStore.create(path, embedding=...)`):
the gallery records the object as an external model named by a fingerprint of its vectors on
fixed probe texts, and a store opened later with another model (or other settings) is refused
rather than mixing two spaces in one index.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance

import compatret
from compatret.api import Index, Where
from compatret.core.errors import CompatretError
from compatret.core.lineage import ModelVersion
from compatret.encoders.base import item_text

PROBES = ("compatret probe: a short sentence about retrieval.", "Ein zweiter Satz, mit Zahlen: 1, 2, 3.")
FINGERPRINT_DIMS = 16  # hashed at 2 decimals: a changed model differs there; a value of an API's noisy floats that
# straddles a rounding boundary would differ too (rare; comparing stored probe vectors by cosine would remove it)


def fingerprint(embedding: Embeddings) -> tuple[str, int]:
    """(model id, dim) of an Embeddings object: its class and a digest of its vectors for PROBES."""
    v = np.asarray(embedding.embed_documents(list(PROBES)) + [embedding.embed_query(PROBES[0])], dtype=np.float64)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    digest = hashlib.sha256((np.round(v[:, :FINGERPRINT_DIMS], 2) + 0.0).tobytes()).hexdigest()[:12]
    return f"{type(embedding).__name__}@{digest}", int(v.shape[1])


class EmbeddingsEncoder:
    """A LangChain Embeddings object behind compatret's Encoder protocol (documents as items)."""

    def __init__(self, embedding: Embeddings, version: ModelVersion) -> None:
        self.embedding, self.version = embedding, version

    @property
    def dim(self) -> int:
        return self.version.dim

    def encode_queries(self, queries: Sequence[Any], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return np.asarray([self.embedding.embed_query(str(q)) for q in queries], dtype=np.float32).reshape(-1, self.dim)

    def encode_items(self, items: Sequence[Any], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return np.asarray(self.embedding.embed_documents([item_text(i) for i in items]), dtype=np.float32).reshape(-1, self.dim)


class GalleryEmbeddings(Embeddings):
    """The gallery's serving model as LangChain Embeddings (whichever model serves at each call)."""

    def __init__(self, index: Index) -> None:
        self.index = index

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.index.encoder().encode_items(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.index.encoder().encode_queries([text])[0].tolist()


class CompatretVectorStore(VectorStore):
    """A compatret gallery (single or sharded) as a LangChain vector store; scores are cosine
    similarities (higher is closer); `filter` keeps documents whose metadata has the given values."""

    def __init__(self, index: Index | str | Path, embedding: Embeddings | None = None) -> None:
        self.index = index if isinstance(index, Index) else compatret.open(index)
        self._embedding = embedding
        serving = self.index.meta.serving
        if embedding is None:
            if serving.method == "external" and self.index.meta.serving_source is None:
                raise CompatretError(f"this gallery's model {serving.id!r} is external: give the Embeddings object that made it")
            return
        if self.index.meta.serving_source is not None:
            raise CompatretError(f"this gallery embeds with its own model {serving.id!r}: open it without an Embeddings object")
        model_id, dim = fingerprint(embedding)
        if (model_id, dim) != (serving.id, serving.dim):
            raise CompatretError(
                f"this gallery's vectors were made by {serving.id!r} ({serving.dim}-d); the Embeddings given fingerprint as "
                f"{model_id!r} ({dim}-d), another model or other settings: refusing to mix two spaces in one index"
            )
        self.index.bind_encoder(EmbeddingsEncoder(embedding, serving))

    # ---- making one ------------------------------------------------------------------
    @classmethod
    def create(
        cls, path: str | Path, *, embedding: Embeddings | None = None, model: str | None = None, **options: Any
    ) -> CompatretVectorStore:
        """A new gallery at `path` embedded by `embedding` (recorded by fingerprint) or by a
        compatret `model` (an alias or folder; its lineage makes later upgrades possible)."""
        if (embedding is None) == (model is None):
            raise CompatretError("give exactly one of embedding (a LangChain Embeddings) or model (a compatret model)")
        if model is not None:
            return cls(compatret.create(path, model, **options))
        model_id, dim = fingerprint(embedding)  # type: ignore[arg-type]
        return cls(compatret.create(path, dim=dim, version_id=model_id, modality="text", **options), embedding)

    @classmethod
    def open(cls, path: str | Path, embedding: Embeddings | None = None) -> CompatretVectorStore:
        return cls(compatret.open(path), embedding)

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        path: str | Path | None = None,
        **kwargs: Any,
    ) -> CompatretVectorStore:
        """A new gallery at `path` (required) holding `texts`, embedded by `embedding`."""
        if path is None:
            raise CompatretError("CompatretVectorStore.from_texts needs path=, the folder of the new gallery")
        store = cls.create(path, embedding=embedding)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding if self._embedding is not None else GalleryEmbeddings(self.index)

    # ---- writes ----------------------------------------------------------------------
    def add_texts(
        self, texts: Iterable[str], metadatas: list[dict[str, Any]] | None = None, *, ids: list[str] | None = None, **kwargs: Any
    ) -> list[str]:
        """Add or update: a text under a stored id replaces that row (see Index.upsert)."""
        texts = list(texts)
        given = list(ids) if ids is not None else [None] * len(texts)
        row_ids = [str(i) if i is not None else uuid.uuid4().hex for i in given]
        if texts:
            self.index.upsert(texts, row_ids, [dict(m) for m in metadatas] if metadatas is not None else None)
        return row_ids

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete these ids (unknown ones are ignored); None deletes every document."""
        targets = self.index.ids_where(lambda _: True) if ids is None else ids
        self.index.delete(targets, missing_ok=True)
        return True

    # ---- reads -----------------------------------------------------------------------
    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return [_document(r) for r in self.index.get(list(ids))]

    def similarity_search(self, query: str, k: int = 4, filter: Where | None = None, **kwargs: Any) -> list[Document]:  # noqa: A002
        return [d for d, _ in self.similarity_search_with_score(query, k, filter)]

    def similarity_search_with_score(
        self,
        query: str,
        k: int = 4,
        filter: Where | None = None,  # noqa: A002 (LangChain's name)
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        return self._search({"texts": [query]}, k, filter)

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, filter: Where | None = None, **kwargs: Any) -> list[Document]:  # noqa: A002
        return [d for d, _ in self.similarity_search_with_score_by_vector(embedding, k, filter)]

    def similarity_search_with_score_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        filter: Where | None = None,  # noqa: A002
    ) -> list[tuple[Document, float]]:
        return self._search({"vectors": np.asarray([embedding], dtype=np.float32)}, k, filter)

    def _search(self, query: dict[str, Any], k: int, where: Where | None) -> list[tuple[Document, float]]:
        if len(self.index) == 0:
            return []
        r = self.index.query(**query, k=k, where=where, include_payload=True)[0]
        payloads = r.payloads or []
        return [(_document({**p, "id": i}), float(s)) for i, s, p in zip(r.ids, r.scores, payloads)]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return lambda score: (score + 1.0) / 2.0  # cosine similarity in [-1, 1] -> relevance in [0, 1]

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Where | None = None,  # noqa: A002
        **kwargs: Any,
    ) -> list[Document]:
        return self.max_marginal_relevance_search_by_vector(self.embeddings.embed_query(query), k, fetch_k, lambda_mult, filter)

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Where | None = None,  # noqa: A002
        **kwargs: Any,
    ) -> list[Document]:
        """Diverse top-k: fetch_k candidates by similarity, then MMR over their vectors in the query's space."""
        found = self.similarity_search_with_score_by_vector(embedding, fetch_k, filter)
        if not found:
            return []
        vectors = self.index.vectors([d.id for d, _ in found])  # type: ignore[misc]
        picked = maximal_marginal_relevance(np.asarray(embedding, dtype=np.float32), vectors.tolist(), lambda_mult, k)
        return [found[n][0] for n in picked]


def _document(row: dict[str, Any]) -> Document:
    return Document(page_content=row.get("text") or row.get("title") or "", metadata=dict(row.get("metadata") or {}), id=row["id"])
