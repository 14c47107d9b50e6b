"""Loaders: item and query files for the CLI, image parquet sets, BEIR-format text sets."""
