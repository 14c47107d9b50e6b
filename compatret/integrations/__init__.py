"""compatret inside the frameworks applications use: `integrations.langchain` (the `langchain`
extra) and `integrations.llamaindex` (the `llamaindex` extra)."""
