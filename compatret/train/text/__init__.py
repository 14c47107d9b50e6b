"""Retrieval-style training of text encoders: STAR, ADORE and compatible item encoders (BCT, BT², OCA)."""
