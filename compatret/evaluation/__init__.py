"""Retrieval and cross-model compatibility metrics."""
