"""GPU checks, one run (eval/gpu/run.sh calls this): faiss-gpu against faiss-cpu on 1M x 384, and
a short BT² training step on CUDA. Writes eval/gpu/results.json. Not run on CPU machines."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def search_check(n: int = 1_000_000, dim: int = 384, queries: int = 1000, k: int = 10) -> dict[str, float]:
    import faiss

    from compatret.search.kernels import make_kernel
    from compatret.core.transforms import normalize

    rng = np.random.default_rng(0)
    x = normalize(rng.normal(size=(n, dim)).astype(np.float32))
    q = normalize(rng.normal(size=(queries, dim)).astype(np.float32))
    out: dict[str, float] = {"gpus": float(faiss.get_num_gpus())}
    found = {}
    for name in ("faiss", "faiss-gpu"):
        kernel = make_kernel(name, x)
        kernel.search(q[:10], k)
        t0 = time.perf_counter()
        scores, labels = kernel.search(q, k)
        out[f"{name}_qps"] = queries / (time.perf_counter() - t0)
        found[name] = (scores, labels)
    (sc, lc), (sg, lg) = found["faiss"], found["faiss-gpu"]
    same = lc == lg
    ties = np.isclose(sc, sg, atol=1e-4)  # a differing id at an equal score is a tie, not an error
    out["ids_equal_fraction"] = float(same.mean())
    out["mismatches_not_ties"] = int((~same & ~ties).sum())
    return out


def bt2_step(work: Path) -> dict[str, float]:
    """One epoch of the BT² recipe of eval/compat_image on CUDA (timed)."""
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "eval/compat_image/run.py", "--epochs", "1", "--device", "cuda", "--work", str(work)],
                          capture_output=True, text=True)
    return {"returncode": float(done.returncode), "seconds": time.perf_counter() - t0, "tail": done.stdout[-2000:] + done.stderr[-2000:]}


if __name__ == "__main__":
    results = {"search_1m_384": search_check(), "bt2_one_epoch": bt2_step(Path("runs/gpu_bt2"))}
    (HERE / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(json.dumps(results, indent=2, default=str))
