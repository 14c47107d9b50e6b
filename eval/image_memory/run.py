"""Image training streams: its peak memory does not grow with the data set.

    python eval/image_memory/run.py                  # 10,000 and 100,000 generated images (minutes on 2 cores)
    python eval/image_memory/run.py --sizes 1000 8000 --out /tmp/mem    # the quick version tests/ runs

Generates N 32x32 JPEGs (10 classes) as a parquet file in row groups of 5,000, then trains one
epoch of a small CIFAR-style ResNet-18 on each set with `compatret train image` (2 loader workers,
batch 128; images shuffled within 16 MB of row groups, so the larger set spans several windows)
in a fresh process whose data segment is capped below what the set would take decoded
in memory (N x 3 x 32 x 32 float32). Memory is the whole job's: the resident set of the trainer,
its forkserver and its loader workers, summed, sampled every 0.1 s; the trainer's own peak too.
Bar: peak(largest set) / peak(smallest) <= 1.2. Writes results.json / results.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
BAR = 1.2
CAP_MB = 1024  # RLIMIT_DATA of each training run: below the decoded size of the 100,000-image set (1,229 MB)
RECIPE = """id = "mem-{n}"
out = "{out}"
[data]
folder = "{data}"
classes = [0, 9]
[method]
name = "independent"
[model]
width = 0.125
image_size = 32
embed_dim = 32
[train]
epochs = 1
batch_size = 128
lr = 0.05
workers = 2
shuffle_mb = 16
"""
# run in the child: train, then report this process's own peak RSS
CHILD = """
import json, resource, sys
from compatret.trainers import train_image
train_image(sys.argv[1], device="cpu")
print(json.dumps({"trainer_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def tree_rss_mb(root: int) -> float:
    """Resident memory of a process and all its descendants (from /proc), in MB."""
    parent: dict[int, int] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                parent[int(d.name)], rss[int(d.name)] = int(fields[1]), int(fields[21])
            except (OSError, IndexError, ValueError):
                continue
    tree, grew = {root}, True
    while grew:
        more = {p for p, pp in parent.items() if pp in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(rss.get(p, 0) for p in tree) * os.sysconf("SC_PAGE_SIZE") / 2**20


def generate(folder: Path, n: int, seed: int = 0) -> Path:
    """n JPEGs of 32x32 noise tinted by their class, as train.parquet (row groups of 5,000)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    tints = rng.integers(0, 256, size=(10, 3))
    writer = pq.ParquetWriter(folder / "train.parquet", pa.schema([("image", pa.binary()), ("label", pa.int64())]))
    for s in range(0, n, 5000):
        images = []
        for y in labels[s : s + 5000]:
            px = np.clip(rng.normal(tints[y], 40, size=(32, 32, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            Image.fromarray(px).save(buf, format="JPEG", quality=90)
            images.append(buf.getvalue())
        writer.write_table(pa.table({"image": pa.array(images, pa.binary()), "label": pa.array(labels[s : s + 5000], pa.int64())}))
    writer.close()
    return folder


def measure(work: Path, n: int) -> dict[str, float]:
    data = generate(work / f"data-{n}", n)
    recipe = work / f"mem-{n}.toml"
    recipe.write_text(RECIPE.format(n=n, out=work / f"model-{n}", data=data))

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (CAP_MB << 20, CAP_MB << 20))

    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(recipe)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=cap
    )
    job = 0.0
    while proc.poll() is None:
        job = max(job, tree_rss_mb(proc.pid))
        time.sleep(0.1)
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"training on {n} images failed:\n{err[-3000:]}")
    trainer = json.loads(out.strip().splitlines()[-1])["trainer_mb"]
    decoded_mb = n * 3 * 32 * 32 * 4 / 2**20
    row = {"images": n, "job_mb": job, "trainer_mb": trainer, "decoded_set_mb": decoded_mb, "seconds": time.perf_counter() - t0}
    print(f"{n} images: job {job:.0f} MB (trainer alone {trainer:.0f} MB; decoded set {decoded_mb:.0f} MB, cap {CAP_MB} MB), "
          f"{row['seconds']:.0f} s", flush=True)  # fmt: skip
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--out", type=Path, default=HERE, help="where results.json / results.md go")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(Path(tmp), n) for n in sorted(args.sizes)]
    ratio = rows[-1]["job_mb"] / rows[0]["job_mb"]
    trainer_ratio = rows[-1]["trainer_mb"] / rows[0]["trainer_mb"]
    result = {
        "rows": rows,
        "ratio": ratio,
        "trainer_ratio": trainer_ratio,
        "bar": BAR,
        "met": ratio <= BAR,
        "cap_mb": CAP_MB,
        "cpus": os.cpu_count(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Image training memory (`python eval/image_memory/run.py`)\n",
        "One epoch of a CIFAR-style ResNet-18 (width 0.125, 32x32, batch 128, 2 loader workers) on generated",
        f"JPEGs streamed from parquet, each run capped at {CAP_MB} MB of data segment (RLIMIT_DATA).\n",
        "| images | job peak RSS (trainer + forkserver + workers) | trainer alone | the set decoded in memory | seconds |",
        "|---:|---:|---:|---:|---:|",
        *[
            f"| {r['images']:,} | {r['job_mb']:.0f} MB | {r['trainer_mb']:.0f} MB | {r['decoded_set_mb']:.0f} MB | {r['seconds']:.0f} |"
            for r in rows
        ],
        "",
        f"Peak ratio, largest set over smallest: **{ratio:.2f}** for the whole job (bar <= {BAR}: {'met' if ratio <= BAR else 'NOT met'}), "
        f"{trainer_ratio:.2f} for the trainer alone. Summed RSS counts a page shared by two processes twice.",
    ]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"ratio {ratio:.2f} (bar <= {BAR})")


if __name__ == "__main__":
    main()
