"""The `compatret` logger: quiet by default, a traceback behind every `error:` line at debug, and
failures compatret recovers from logged with their own traceback instead of vanishing."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

from compatret.server.jobs import BackfillJob


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "compatret", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_an_error_is_one_line_and_debug_adds_its_traceback(tmp_path):
    quiet = run("query", str(tmp_path / "nowhere"), "--text", "x")
    assert quiet.returncode == 2 and quiet.stderr.strip().splitlines() == [quiet.stderr.strip()] and "error:" in quiet.stderr
    loud = run("--log-level", "debug", "query", str(tmp_path / "nowhere"), "--text", "x")
    assert loud.returncode == 2 and loud.stderr.startswith(quiet.stderr.strip())
    assert "Traceback (most recent call last)" in loud.stderr and "DEBUG compatret.cli.output" in loud.stderr
    from_env = run("query", str(tmp_path / "nowhere"), "--text", "x", env={"COMPATRET_LOG": "debug"})
    assert "Traceback (most recent call last)" in from_env.stderr


def test_an_unknown_level_is_refused():
    res = run("--log-level", "loud", "query", "g", "--text", "x")
    assert res.returncode == 2 and "loud" in res.stderr and "Traceback" not in res.stderr
    res = run("query", "g", "--text", "x", env={"COMPATRET_LOG": "loud"})
    assert res.returncode == 2 and "loud" in res.stderr and "Traceback" not in res.stderr


def test_a_dead_backfill_job_is_logged_with_its_traceback(tmp_path, caplog):
    def broken() -> dict:
        raise RuntimeError("disk on fire")

    with caplog.at_level(logging.ERROR, logger="compatret"):
        assert BackfillJob(tmp_path).start(broken)
        deadline = time.time() + 10
        while not caplog.records and time.time() < deadline:
            time.sleep(0.02)
    (record,) = [r for r in caplog.records if r.name == "compatret.server.jobs"]
    assert record.exc_info is not None and "disk on fire" in str(record.exc_info[1])
