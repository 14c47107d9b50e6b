"""Compatibility losses: small modules, one per file, each returning its named parts."""
