"""Upgrades to a model nobody trained for compatibility: maps fitted between two models' spaces."""
