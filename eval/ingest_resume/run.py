"""Interrupting `index add` (issue 16): Ctrl-C and kill -9 at random moments, then rerun the same command.

    python eval/ingest_resume/run.py     # -> eval/ingest_resume/results.{json,md} (about 5 min on 2 cores)

5,000 SciFact documents (the first of corpus.jsonl) embedded by paraphrase-MiniLM-L3-v2 (the
ONNX model: fast enough for ten interrupted runs). Ten runs of `compatret index add G --items
docs.jsonl` are each interrupted at a random moment after their first commit, SIGINT and
SIGKILL in turn; then the same command runs to the end. The gallery must hold every document
once with the vectors of an uninterrupted run, and `index verify` must find its cache equal to
the table.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from compatret.core.config import dataset, index_home

HERE = Path(__file__).resolve().parent
DOCS = 5000


def add(gallery: Path, items: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "compatret", "index", "add", str(gallery), "--items", str(items)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def latest_version(gallery: Path) -> int:
    import lance

    return int(lance.dataset(str(gallery / "gallery.lance")).latest_version)


def rows(gallery: Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """Every stored id (duplicates kept) and id -> vector."""
    import lance

    t = lance.dataset(str(gallery / "gallery.lance")).to_table(columns=["id", "vector"])
    ids = t.column("id").to_pylist()
    return ids, dict(zip(ids, np.asarray(t.column("vector").to_pylist(), dtype=np.float32)))


def interrupted_runs(gallery: Path, items: Path, runs: int, rng: random.Random) -> list[dict[str, Any]]:
    """`runs` interrupted adds: each signalled 0-6 s after its first commit (SIGINT, then SIGKILL, in turn)."""
    log = []
    for n in range(runs):
        sig = signal.SIGINT if n % 2 == 0 else signal.SIGKILL
        start = latest_version(gallery)
        proc = add(gallery, items)
        while proc.poll() is None and latest_version(gallery) == start:
            time.sleep(0.02)
        time.sleep(rng.uniform(0, 6))
        finished_first = proc.poll() is not None
        if not finished_first:
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=300)
        stored = len(rows(gallery)[0])
        log.append({"run": n + 1, "signal": sig.name, "exit_code": proc.returncode, "finished_before_signal": finished_first,
                    "rows_after": stored, "said": (out.strip() or err.strip()).splitlines()[-1] if (out.strip() or err.strip()) else ""})
        print(f"run {n + 1}: {sig.name}, exit {proc.returncode}, {stored} rows stored", flush=True)
    return log


def main() -> None:
    work = index_home() / "ingest_resume"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    corpus = [json.loads(line) for line in (dataset("scifact") / "corpus.jsonl").read_text().splitlines()[:DOCS]]
    items = work / "docs.jsonl"
    items.write_text("".join(json.dumps({"id": d["_id"], "title": d["title"], "text": d["text"]}) + "\n" for d in corpus))
    for name in ("reference", "interrupted"):
        subprocess.run([sys.executable, "-m", "compatret", "index", "create", str(work / name), "--model", "minilm-l3"], check=True,
                       capture_output=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "compatret", "index", "add", str(work / "reference"), "--items", str(items)], check=True,
                   capture_output=True)
    reference_seconds = time.perf_counter() - t0
    log = interrupted_runs(work / "interrupted", items, 10, random.Random(0))
    final = add(work / "interrupted", items)
    out, err = final.communicate(timeout=1800)
    ids, got = rows(work / "interrupted")
    _, want = rows(work / "reference")
    verify = subprocess.run([sys.executable, "-m", "compatret", "index", "verify", str(work / "interrupted")], capture_output=True, text=True)
    diff = max(float(np.abs(got[i] - want[i]).max()) for i in want) if set(got) == set(want) else None
    results = {
        "command": "python eval/ingest_resume/run.py", "documents": DOCS, "model": "minilm-l3 (paraphrase-MiniLM-L3-v2, ONNX)",
        "uninterrupted_seconds": round(reference_seconds, 1), "interrupts": log,
        "interrupted_mid_run": sum(not r["finished_before_signal"] for r in log),
        "final_run": {"exit_code": final.returncode, "said": out.strip().splitlines()[-1] if out.strip() else err.strip()},
        "rows": len(ids), "distinct_ids": len(set(ids)), "missing": len(set(want) - set(ids)),
        "max_abs_vector_difference": diff, "verify": verify.stdout.strip().splitlines()[-1] if verify.stdout.strip() else verify.stderr.strip(),
        "verify_exit_code": verify.returncode,
    }
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    ok = results["rows"] == results["distinct_ids"] == DOCS and results["missing"] == 0 and diff is not None and diff <= 1e-5
    (HERE / "results.md").write_text(
        "| check | result |\n|---|---|\n"
        f"| interrupts (SIGINT / SIGKILL in turn, 0-6 s after a run's first commit) | {results['interrupted_mid_run']} of 10 landed mid-run |\n"
        f"| rerun of the same command | exit {final.returncode}: {results['final_run']['said']} |\n"
        f"| rows / distinct ids / missing | {results['rows']} / {results['distinct_ids']} / {results['missing']} |\n"
        f"| largest vector difference from an uninterrupted run | {diff} |\n"
        f"| index verify | {results['verify']} |\n"
        f"| verdict | {'every document stored once, vectors equal' if ok else 'FAILED'} |\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    os.environ.setdefault("LANCEDB_LOG", "error")
    main()
