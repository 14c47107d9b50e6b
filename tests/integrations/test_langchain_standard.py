"""LangChain's own standard vector store suite (langchain-tests), unmodified, against compatret's
store embedded by the suite's Embeddings object: every test of it runs, none overridden."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import pytest
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests import VectorStoreIntegrationTests

from compatret.integrations.langchain import CompatretVectorStore


class TestCompatretStandard(VectorStoreIntegrationTests):
    @pytest.fixture()
    def vectorstore(self, tmp_path: Path) -> Generator[VectorStore, None, None]:  # type: ignore[override]
        """A new, empty gallery per test (the suite's fixture contract), removed with tmp_path."""
        yield CompatretVectorStore.create(tmp_path / "gallery", embedding=self.get_embeddings())
