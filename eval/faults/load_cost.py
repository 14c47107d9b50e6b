"""What checking cache files costs at 10M rows: the old memory-mapped load against today's checked
copy-on-load (issue 27), on the same 100 fragment folders of 100,000 x 128 float32 rows (5.1 GB).

    python eval/faults/load_cost.py      # -> eval/faults/load_cost.json (needs about 11 GB free disk)

Each load runs in its own process and keeps every fragment, as a view does, reading every vector
once (as building a kernel does); the page cache is warm for both (same files, read before).
Memory: process-private (anonymous) against file-backed pages, from /proc/self/status: file-backed
pages are shared with the page cache and dropped under pressure, private ones are not.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
ROWS, DIM, FRAGMENTS = 10_000_000, 128, 100


def build(where: Path) -> None:
    from compatret.search.fragments import FragmentCache, FragmentRows, RowsRead

    cache = FragmentCache(where)
    per = ROWS // FRAGMENTS
    rng = np.random.default_rng(0)
    for f in range(FRAGMENTS):
        vec = rng.standard_normal((per, DIM), dtype=np.float32)
        ids = np.array([f"{f}-{i}" for i in range(per)])
        rows = FragmentRows(f"{f}-k", f, None, RowsRead(np.arange(per, dtype=np.int64), ids, np.full(per, "v1"), {"v1": vec}))
        cache.save(rows, 1)
        if not (cache.file(rows.key) / "vec-0.npy").exists():
            raise SystemExit(f"could not write {cache.file(rows.key)}")


def load(where: str, how: str) -> None:
    """In a child process: load every fragment folder, touch every vector, print seconds and peak RSS."""
    import resource

    from compatret.search.fragments import FragmentCache

    cache = FragmentCache(Path(where))
    start = time.perf_counter()
    held = []  # a view holds every fragment's rows
    for f in range(FRAGMENTS):
        if how == "mmap (before)":
            vec = np.load(cache.file(f"{f}-k") / "vec-0.npy", mmap_mode="r")
        else:
            vec = cache.read(f"{f}-k").read.vectors["v1"]
        vec.sum(dtype=np.float64)
        held.append(vec)
    seconds = time.perf_counter() - start
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    gib = {k: round(int(status[k].split()[0]) / 2**20, 2) for k in ("RssAnon", "RssFile")}  # kB -> GiB
    print(json.dumps({"how": how, "seconds": round(seconds, 2), "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                      "anon_gib": gib["RssAnon"], "file_backed_gib": gib["RssFile"]}))


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="compatret-load-"))
    try:
        t = time.perf_counter()
        build(tmp)
        built = time.perf_counter() - t
        runs = []
        for how in ("mmap (before)", "checked copy (now)", "mmap (before)", "checked copy (now)"):
            out = subprocess.run([sys.executable, __file__, "--load", str(tmp), how], capture_output=True, text=True, check=True)
            runs.append(json.loads(out.stdout))
            print(runs[-1], flush=True)
        best = {how: min((r for r in runs if r["how"] == how), key=lambda r: r["seconds"]) for how in ("mmap (before)", "checked copy (now)")}
        result = {"command": "python eval/faults/load_cost.py", "rows": ROWS, "dim": DIM, "fragments": FRAGMENTS,
                  "vector_gib": round(ROWS * DIM * 4 / 2**30, 2), "write_seconds": round(built, 1), "runs": runs, "best": best}
        (HERE / "load_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--load":
        load(sys.argv[2], sys.argv[3])
    else:
        main()
