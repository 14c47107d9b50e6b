"""The README's main job, end to end on the bundled digits: compatibility without backfill, and
the table the README prints is the table the command prints."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from compatret.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
ROW = re.compile(r"^(\S.*?)\s{2,}(\S+)\s{2,}(\S+)\s+(\d+\.\d)$")


def readme_table() -> dict[str, tuple[str, str, float]]:
    """The quickstart's table as the README shows it: pair -> (query model, gallery vectors, top-1)."""
    text = README.read_text()
    section = text[text.index("## Quickstart"):]
    section = section[:section.index("\n## ")]  # up to the next section
    block = section[section.index("```\npair"):].split("```")[1]  # the printed output
    rows = [ROW.match(line) for line in block.splitlines()[1:]]
    return {m.group(1): (m.group(2), m.group(3), float(m.group(4))) for m in rows if m}


def test_quickstart_upgrades_without_backfill_and_prints_the_readme_table(tmp_path):
    res = CliRunner().invoke(main, ["quickstart", "--workdir", str(tmp_path / "qs"), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)  # stdout is the JSON alone
    top1 = {row["pair"]: row["top1"] for row in report["pairs"]}
    assert top1["new/old (no backfill)"] > top1["old/old"]  # ECC: the upgrade helps at once
    assert top1["new/new (after backfill)"] >= top1["new/old (no backfill)"]
    assert top1["independent new/old"] < 30  # incompatible spaces: near chance (10 %)
    assert "cannot read this gallery's rows" in report["refused"] and "compatret adapt" in report["refused"]

    shown = readme_table()
    assert list(shown) == [row["pair"] for row in report["pairs"]]
    for row in report["pairs"]:
        query, gallery, value = shown[row["pair"]]
        assert (query, gallery) == (row["query"], row["gallery"])
        # seeded training gives these numbers exactly on this machine; another CPU may round a
        # convolution differently, so a point of slack, no more
        assert abs(value - row["top1"]) <= 1.0, (row["pair"], value, row["top1"])

    again = CliRunner().invoke(main, ["quickstart", "--workdir", str(tmp_path / "qs")])
    assert again.exit_code == 2 and "not empty" in again.stderr
