"""Trainers: classification-style for image encoders, retrieval-style for text encoders."""
