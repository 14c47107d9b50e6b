"""CLI command groups kept out of cli.py: `compatret train` and `compatret eval`."""
