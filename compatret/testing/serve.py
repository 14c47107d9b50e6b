"""A real `compatret serve` process on a free loopback port, for the HTTP tests and benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from compatret.testing.ports import free_port


def answers_health(url: str, seconds: float) -> bool:
    """Whether GET /health answers 200 within `seconds` (polled: a server takes a few seconds to start)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            time.sleep(0.2)
    return False


@contextmanager
def serving(gallery: str, *options: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """Start `compatret serve GALLERY OPTIONS...`, wait for /health, yield its URL, stop it."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "compatret", "serve", gallery, "--port", str(port), *options],
        env={**(env if env is not None else os.environ), "LANCEDB_LOG": "error"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    if not answers_health(url, 60):
        proc.kill()
        raise RuntimeError(f"compatret serve did not answer /health within 60 s: {proc.stderr.read().decode() if proc.stderr else ''}")
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
