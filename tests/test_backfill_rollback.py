"""A rollback landing during a backfill (issue 27, item 7): the backfill's report stays true of the
table, and a rollback that changes the serving model stops it with exit code 2, not 0."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Callable

import numpy as np
import pytest
from test_backfill import _backfill_cmd, snapshot, upgraded_gallery

from compatret import CompatretError
from compatret.engine.backfill import backfill
from compatret.store.pending import pending_rows
from compatret.store.history import rollback
from compatret.engine.service import Service


def rollback_before_batch(path, to: int, batch: int) -> Callable[[], bool]:
    """A should_stop hook that never stops, but rolls the gallery back to `to` just before batch
    number `batch` (the backfill checks it between batches, outside the writer lock)."""
    calls = 0

    def hook() -> bool:
        nonlocal calls
        calls += 1
        if calls == batch:
            rollback(Service.open(path).gallery, to)
        return False

    return hook


@pytest.mark.parametrize("limit, done, remaining", [(None, 96 + 48, 0), (64, 64, 96 - 16)])
def test_rollback_to_after_the_upgrade_keeps_the_report_true(tmp_path, digit_models, limit, done, remaining):
    """A rollback to the upgrade's own version (serving v2, every row old again) after 3 batches of 16:
    a full run re-embeds the undone rows too and leaves none pending; a limited one reports the
    rows still pending in the table, not what its plan had left."""
    s = upgraded_gallery(tmp_path, digit_models, n=96)
    upgraded = s.gallery.version
    report = backfill(s, limit=limit, batch_size=16, progress=False, should_stop=rollback_before_batch(tmp_path / "g", upgraded, 4))
    after = Service.open(tmp_path / "g")
    assert after.meta.serving.id == "v2"
    assert report.remaining == len(pending_rows(after.gallery).ids) == remaining
    assert (report.done, report.stopped) == (done, False)
    assert after.rows_by_version() == ({"v2": 96} if remaining == 0 else {"v1": remaining, "v2": 96 - remaining})


def test_rollback_to_before_the_upgrade_stops_the_backfill(tmp_path, digit_models):
    """A rollback to the pre-upgrade version (serving v1) after 2 batches: the backfill raises one
    line naming the change, and writes no v2 vector after it (the table is as it was before the upgrade)."""
    s = Service.create(tmp_path / "g", model=digit_models["v1"])
    s.add_items(digit_models["items"][:96], progress=False)
    before, point = snapshot(tmp_path / "g"), s.gallery.version
    s.upgrade(digit_models["v2"])
    with pytest.raises(CompatretError, match=r"serving model changed from v2 to v1 during the backfill.*32 rows") as err:
        backfill(s, batch_size=16, progress=False, should_stop=rollback_before_batch(tmp_path / "g", point, 3))
    assert "\n" not in str(err.value)
    after = Service.open(tmp_path / "g")
    assert after.meta.serving.id == "v1" and after.rows_by_version() == {"v1": 96}
    rows = snapshot(tmp_path / "g")
    assert rows.keys() == before.keys() and all(np.allclose(rows[i][1], v) for i, (_, v) in before.items())


@pytest.mark.processes
def test_cli_backfill_exits_2_when_a_concurrent_rollback_changes_the_serving_model(tmp_path, digit_models):
    """`compatret index backfill` in its own process, and a real rollback to the pre-upgrade version
    from this one once it has committed a batch: exit code 2, one `error:` line naming the change,
    no report claiming success, and no row left with (or later given) a v2 vector."""
    n = 300
    s = Service.create(tmp_path / "g", model=digit_models["v1"])
    s.add_items(digit_models["items"][:n], progress=False)
    before, point = snapshot(tmp_path / "g"), s.gallery.version
    s.upgrade(digit_models["v2"])
    proc = subprocess.Popen(_backfill_cmd(tmp_path / "g", 1), env={**os.environ, "LANCEDB_LOG": "error"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and "v2" not in Service.open(tmp_path / "g").rows_by_version():
        time.sleep(0.05)
    rollback(Service.open(tmp_path / "g").gallery, point)
    assert proc.poll() is None, "the backfill finished before the rollback could land"
    out, err = proc.communicate(timeout=120)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, out.decode()[-2000:], err.decode()[-2000:])
    assert out == b"" and len(lines) == 1, lines
    assert lines[0].startswith("error: the gallery's serving model changed from v2 to v1 during the backfill")
    after = Service.open(tmp_path / "g")
    assert after.meta.serving.id == "v1" and after.rows_by_version() == {"v1": n}
    rows = snapshot(tmp_path / "g")
    assert all(np.allclose(rows[i][1], v) for i, (_, v) in before.items())
