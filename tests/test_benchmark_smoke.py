"""The image compatibility benchmark end to end at smoke scale: 13 real models, two at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_compat_image_benchmark_smoke_writes_the_issue_schema(tmp_path, data_root):
    cmd = [sys.executable, str(ROOT / "eval/compat_image/run.py"), "--smoke", "--jobs", "2", "--work", str(tmp_path)]
    env = {**os.environ, "COMPATRET_DATA": str(data_root), "LANCEDB_LOG": "error"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert set(results["methods"]) == {"independent", "bct", "dsimplex", "bt2", "oca"}
    for cells in results["methods"].values():
        for pair in ("old_old", "new_old", "new_new"):
            assert 0 <= cells[pair]["top1"] <= 100 and 0 <= cells[pair]["map"] <= 100
    for chain in results["chain"].values():
        assert len(chain["matrix"]) == 3 and 0 <= chain["ac"] <= 1
    assert results["config"]["smoke"] is True and len(results["config"]["epochs"]) == 13
    assert (tmp_path / "results" / "heatmap_chain_bt2.png").stat().st_size > 0
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert rerun.returncode == 0 and rerun.stdout.count("already trained") == 13


def test_concurrency_benchmark_smoke_finds_no_ghosts(tmp_path):
    """4 writer and 2 reader processes for a few seconds; every answer checked against its table version."""
    cmd = [sys.executable, str(ROOT / "eval/concurrency/run.py"), "--rows", "1000", "--seconds", "6",
           "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "LANCEDB_LOG": "error"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads((tmp_path / "out" / "results.json").read_text())
    assert r["writes"] > 10 and r["queries"] > 20 and r["probes_checked"] > 10
    for key in ("ghosts", "missing", "duplicates", "score_mismatches", "tracebacks", "verify_mismatches", "processes_died"):
        assert r[key] == 0, (key, r["first_errors"])
