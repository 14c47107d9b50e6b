"""CLI command groups kept out of cli.py (`compatret train`, `compatret eval`) and the output helpers all commands share."""
