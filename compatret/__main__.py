"""`python -m compatret` runs the CLI (what the `compatret` script does)."""

from compatret.cli.main import main

main()
