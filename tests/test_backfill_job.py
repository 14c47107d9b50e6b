"""The server's background backfill job: one per gallery, whichever worker process asks."""

from __future__ import annotations

import subprocess
import sys
import time

from compatret.server.jobs import JOB_LOCK, PROBE_WAIT_S, BackfillJob

HOLDER = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1], thread_local=False)
lock.acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
lock.release()
"""


def hold_lock(path, seconds: float) -> subprocess.Popen:
    """Another process (another worker) holding the job lock for `seconds`."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path / JOB_LOCK), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def wait_ended(job: BackfillJob) -> dict:
    deadline = time.time() + 10
    while job.running() and time.time() < deadline:
        time.sleep(0.01)
    return job.last()


def test_a_start_is_not_refused_by_another_workers_status_probe(tmp_path):
    """`running()` in another worker takes the lock for an instant to look; a start, or a
    rollback's check, that meets that instant waits it out instead of answering 409. A job
    that really runs refuses both."""
    job = BackfillJob(tmp_path)
    probe = hold_lock(tmp_path, 0.3)
    assert job.start(lambda: {"done": 1})
    probe.wait()
    assert wait_ended(job)["report"] == {"done": 1}
    probe = hold_lock(tmp_path, 0.3)
    assert job.running() and not job.running(wait=PROBE_WAIT_S)  # a rollback's check waits the probe out too
    probe.wait()
    busy = hold_lock(tmp_path, 5)
    try:
        assert job.running(wait=PROBE_WAIT_S) and not job.start(lambda: {"done": 2})
    finally:
        busy.kill()
        busy.wait()
    assert not job.running() and job.last()["report"] == {"done": 1}  # a killed holder's lock is free again


def test_a_failing_job_records_its_error_and_frees_the_lock(tmp_path):
    job = BackfillJob(tmp_path)

    def broken() -> dict:
        raise ValueError("boom\nsecond line")

    assert job.start(broken)
    outcome = wait_ended(job)
    assert outcome["error"] == "ValueError: boom" and outcome["report"] is None and "ended" in outcome
    assert "boom\nsecond line" in outcome["traceback"] and "in broken" in outcome["traceback"]  # the whole error, kept
    assert not job.running() and job.start(lambda: {"done": 3})
    assert wait_ended(job)["report"] == {"done": 3}
