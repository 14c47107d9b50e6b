from compatret.cli.main import main

__all__ = ["main"]
