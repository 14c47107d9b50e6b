"""What a sharded gallery's write is about to do, on disk from before its first shard commit
until its snapshot is published: the mark that lets the same command finish an interrupted
write, and refuses every other write meanwhile (see `engine.sharded`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from compatret.core.errors import CompatretError

INTENT_FILE = ".intent.json"


class Intent:
    def __init__(self, root: Path) -> None:
        self.file = root / INTENT_FILE

    def read(self) -> dict[str, Any] | None:
        try:
            found = json.loads(self.file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CompatretError(f"{self.file} cannot be read ({exc}): put every shard back with `compatret index rollback`") from exc
        if not isinstance(found, dict) or not {"command", "key", "from"} <= set(found):
            raise CompatretError(f"{self.file} is not an intent compatret wrote: put every shard back with `compatret index rollback`")
        return found

    def write(self, command: str, key: str, snapshot: int) -> None:
        """Written whole or not at all (a temporary file renamed over it), and on disk before any shard commits."""
        tmp = self.file.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump({"command": command, "key": key, "from": snapshot}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.file)

    def clear(self) -> None:
        self.file.unlink(missing_ok=True)
