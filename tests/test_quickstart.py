"""The README's main job, end to end on the bundled digits: compatibility without backfill."""

from __future__ import annotations

import json

from click.testing import CliRunner

from compatret.cli import main


def test_quickstart_upgrades_without_backfill(tmp_path):
    res = CliRunner().invoke(main, ["quickstart", "--workdir", str(tmp_path / "qs"), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout.strip().splitlines()[-1])
    top1 = {row["pair"]: row["top1"] for row in report["pairs"]}
    assert top1["new/old (no backfill)"] > top1["old/old"]  # ECC: the upgrade helps at once
    assert top1["new/new (after backfill)"] >= top1["new/old (no backfill)"]
    assert top1["independent new/old"] < 30  # incompatible spaces: near chance (10 %)
    assert "not compatible" in report["refused"]
    again = CliRunner().invoke(main, ["quickstart", "--workdir", str(tmp_path / "qs")])
    assert again.exit_code == 2 and "not empty" in again.stderr
