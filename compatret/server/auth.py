"""API keys for `compatret serve`: a read scope (query, status) and a write scope (everything).

Keys come from a key file and/or the environment; requests carry `Authorization: Bearer KEY`.
Keys are compared in constant time, and only their digests are kept in memory.

Key file format: one key per line, `read KEY` or `write KEY`; blank lines and lines starting
with `#` are ignored. A key is at least 16 characters of [A-Za-z0-9._~+/=-].
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from compatret.core.errors import CompatretError

Scope = Literal["read", "write"]
WRITE_ENV = "COMPATRET_API_KEY"
READ_ENV = "COMPATRET_READ_API_KEY"
KEY_PATTERN = re.compile(r"^[A-Za-z0-9._~+/=-]{16,512}$")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class ApiKeys:
    """The keys a server accepts, by scope (as sha256 digests)."""

    write: tuple[bytes, ...] = ()
    read: tuple[bytes, ...] = field(default=())

    @property
    def enabled(self) -> bool:
        return bool(self.write or self.read)

    def scope_of(self, key: str) -> Scope | None:
        """The scope a presented key grants, or None; every stored key is compared (constant time)."""
        d = _digest(key)
        is_write = any([hmac.compare_digest(d, k) for k in self.write])
        is_read = any([hmac.compare_digest(d, k) for k in self.read])
        return "write" if is_write else "read" if is_read else None

    @staticmethod
    def load(key_file: str | Path | None = None, environ: dict[str, str] | None = None) -> ApiKeys:
        """Keys from `key_file` (format above) plus $COMPATRET_API_KEY (write) and $COMPATRET_READ_API_KEY (read)."""
        env = os.environ if environ is None else environ
        keys: dict[Scope, list[str]] = {"read": [], "write": []}
        if key_file is not None:
            path = Path(key_file)
            try:
                lines = path.read_text().splitlines()
            except OSError as exc:
                raise CompatretError(f"cannot read API key file {path}: {exc.strerror}") from exc
            for n, line in enumerate(lines, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                parts = line.split()
                if len(parts) != 2 or parts[0] not in ("read", "write"):
                    raise CompatretError(f"{path}:{n}: expected `read KEY` or `write KEY`")
                keys[parts[0]].append(parts[1])  # type: ignore[index]
        for scope, name in (("write", WRITE_ENV), ("read", READ_ENV)):
            if env.get(name):
                keys[scope].append(env[name])  # type: ignore[index]
        for scope, values in keys.items():
            for key in values:
                if not KEY_PATTERN.match(key):
                    raise CompatretError(f"a {scope} API key must be 16-512 characters of [A-Za-z0-9._~+/=-]")
        return ApiKeys(tuple(_digest(k) for k in keys["write"]), tuple(_digest(k) for k in keys["read"]))


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server reachable from this machine only."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
