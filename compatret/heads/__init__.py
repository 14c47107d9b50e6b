"""Classifier and transformation heads used to train compatible image embeddings."""
