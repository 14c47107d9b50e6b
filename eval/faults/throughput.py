"""Read-only query throughput of `compatret serve`, to price read-your-writes (one stat of the
gallery's `.written` mark per query; bar: at most 10 % below the code without it).

    python eval/faults/throughput.py now                                   # this checkout
    git worktree add /tmp/before d524775                                   # the code before issue 27
    PYTHONPATH=/tmp/before python eval/faults/throughput.py before
    python eval/faults/throughput.py now                                   # again: the two interleave
    python eval/faults/throughput.py now --in-process                      # Service.query, no HTTP (and before, likewise)

Each run builds a 20,000 x 64 flat gallery, starts a one-worker server and posts one-vector
queries (the case where a per-query cost shows most) from 4 client threads for 20 s after a
warm-up; q/s is appended to eval/faults/throughput.json under the label. `--in-process` times
Service.query (refresh 1 s, as a server) in this process instead: 5 rounds of 500 one-vector
queries, best round, without the HTTP stack whose noise on 2 shared cores is +-15 %.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).parent
ROWS, DIM, SECONDS, CLIENTS = 20_000, 64, 20.0, 4


def in_process(label: str) -> None:
    import compatret
    from compatret.engine.service import Service

    tmp = Path(tempfile.mkdtemp(prefix="compatret-tput-"))
    x = np.random.default_rng(0).standard_normal((ROWS, DIM)).astype(np.float32)
    Service.create(tmp / "g", dim=DIM, version_id="v1", ann="flat").add_vectors(x, ids=[f"r{i}" for i in range(ROWS)])
    service = Service.open(tmp / "g", refresh_seconds=1.0)
    service.query(vectors=x[:1])
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for i in range(500):
            service.query(vectors=x[i : i + 1], k=10)
        rounds.append(500 / (time.perf_counter() - start))
    record({"label": label, "how": "in-process", "code": str(Path(compatret.__file__).parent), "qps": round(max(rounds), 1)})
    shutil.rmtree(tmp, ignore_errors=True)


def record(run: dict[str, object]) -> None:
    out = HERE / "throughput.json"
    runs = json.loads(out.read_text()) if out.exists() else []
    runs.append(run)
    out.write_text(json.dumps(runs, indent=2) + "\n")
    print(run)


def main(label: str) -> None:
    import compatret
    from compatret.engine.service import Service

    from compatret.testing.ports import free_port
    tmp = Path(tempfile.mkdtemp(prefix="compatret-tput-"))
    x = np.random.default_rng(0).standard_normal((ROWS, DIM)).astype(np.float32)
    Service.create(tmp / "g", dim=DIM, version_id="v1", ann="flat").add_vectors(x, ids=[f"r{i}" for i in range(ROWS)])
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "compatret", "serve", str(tmp / "g"), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(f"{url}/health", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        counts = [0] * CLIENTS
        stop = threading.Event()

        def client(n: int) -> None:
            rng = np.random.default_rng(n)
            with httpx.Client() as c:
                while not stop.is_set():
                    r = c.post(f"{url}/query", json={"vectors": [x[rng.integers(ROWS)].tolist()], "k": 10}, timeout=60)
                    r.raise_for_status()
                    counts[n] += 1

        threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(3.0)  # warm-up
        begin, start = sum(counts), time.perf_counter()
        time.sleep(SECONDS)
        done, seconds = sum(counts) - begin, time.perf_counter() - start
        stop.set()
        for t in threads:
            t.join()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    record({"label": label, "how": "http", "code": str(Path(compatret.__file__).parent), "qps": round(done / seconds, 1)})
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    (in_process if "--in-process" in sys.argv else main)(sys.argv[1] if len(sys.argv) > 1 else "now")
