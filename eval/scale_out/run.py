"""Scale out: `--engine ray` against the local engine, ingest and backfill of 110,000 real images.

    python eval/scale_out/run.py                 # 110,000 images; about 15 min on 2 cores
    python eval/scale_out/run.py --rows 5000     # smoke

Items: CIFAR-10 (train + test, 60,000) and Tiny-ImageNet-100 train (50,000) images, as JPEG
bytes in one Parquet file. Models: a small CNN (32x32 input, 128-d) as v1 and an identity
descendant v2 with other weights; their weights are random (throughput does not depend on
them, and the rows each engine writes are compared). Each engine is timed as the command a
user types (`compatret index add --items ... [--engine ray --workers 2]`, then `index upgrade`
and `index backfill`), process start, model loading and, for Ray, starting a local cluster
included. Then a two-node Ray cluster on this machine (`ray start --head` and a second
`ray start --address`, each with 1 CPU and its own temp dir, loopback only) ingests the first
rows again, and its gallery is compared row by row with the local one.

Writes eval/scale_out/results.json (ingest_ratio, backfill_ratio: Ray rows/s over local rows/s)
and results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from compatret.testing.ports import free_port  # noqa: E402

HERE = Path(__file__).resolve().parent
ENV = {**os.environ, "LANCEDB_LOG": "error", "HF_HUB_OFFLINE": "1"}


def log(msg: str) -> None:
    print(f"[scale_out {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_items(work: Path, rows: int) -> Path:
    from compatret.core.config import dataset

    out = work / f"items-{rows}.parquet"
    if out.exists():
        return out
    parts = []
    for name, split in (("cifar10", "train"), ("cifar10", "test"), ("tinyimagenet100", "train")):
        t = pq.read_table(dataset(name) / f"{split}.parquet")
        ids = [f"{name}-{split}-{i}" for i in range(t.num_rows)]
        meta = pa.array([{"label": int(y), "source": name} for y in t.column("label").to_pylist()])
        parts.append(pa.table({"id": ids, "image": t.column("image"), "metadata": meta}))
    table = pa.concat_tables(parts).slice(0, rows)
    pq.write_table(table, out, row_group_size=4096)
    log(f"{table.num_rows:,} items -> {out}")
    return out


def make_models(work: Path) -> tuple[str, str]:
    import torch

    from compatret.encoders.image import ImageEmbedder, ImageModelSpec, save_image_model
    from compatret.core.lineage import ModelVersion

    spec = ImageModelSpec(width=0.25, in_channels=3, image_size=32, embed_dim=128, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    v1 = ModelVersion("cnn-v1", 128, "image", method="random-init (throughput benchmark)")
    v2 = ModelVersion("cnn-v2", 128, "image", parent=v1, method="random-init (throughput benchmark)")
    for seed, version in ((1, v1), (2, v2)):
        folder = work / "models" / version.id
        if not (folder / "compatret_version.json").exists():
            torch.manual_seed(seed)
            save_image_model(ImageEmbedder(spec), version, folder)
    return str(work / "models" / "cnn-v1"), str(work / "models" / "cnn-v2")


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env or ENV, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return seconds, json.loads(done.stdout.strip().splitlines()[-1])


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "compatret", *args]


def run_engine(work: Path, items: Path, v1: str, v2: str, rows: int, engine: list[str]) -> dict[str, float]:
    name = "ray" if engine else "local"
    g = work / f"g-{name}"
    shutil.rmtree(g, ignore_errors=True)
    timed(cli("index", "create", str(g), "--model", v1, "--json"))
    t_add, rep = timed(cli("index", "add", str(g), "--items", str(items), "--batch-size", "256", *engine, "--json"))
    log(f"{name}: ingest {rows:,} rows in {t_add:.1f} s ({rows / t_add:,.0f} rows/s)")
    timed(cli("index", "upgrade", str(g), "--model", v2, "--json"))
    t_bf, bf = timed(cli("index", "backfill", str(g), "--batch-size", "256", *engine, "--json"))
    log(f"{name}: backfill {bf['done']:,} rows in {t_bf:.1f} s ({bf['done'] / t_bf:,.0f} rows/s)")
    return {"ingest_s": t_add, "ingest_rows_per_s": rows / t_add, "backfill_s": t_bf, "backfill_rows_per_s": bf["done"] / t_bf,
            "backfilled": bf["done"], "rows": rep.get("rows", rows)}



def two_nodes(work: Path, items: Path, v1: str, rows: int) -> dict[str, Any]:
    """Ingest the first `rows` items on a two-node cluster on this machine; compare with the local engine."""
    from compatret.store.gallery import Gallery

    small = work / f"items-two-nodes-{rows}.parquet"
    pq.write_table(pq.read_table(items).slice(0, rows), small)
    ray_bin = str(Path(sys.executable).parent / "ray")
    env = {**ENV, "RAY_AUTH_MODE": "disabled"}  # two nodes with their own temp dirs share no auth token file
    port = free_port()
    head_tmp, node_tmp = Path("/tmp/ray-head"), Path("/tmp/ray-node2")  # short paths: Ray's socket names are length-limited
    stop = [ray_bin, "stop", "--force"]
    subprocess.run(stop, env=env, capture_output=True)
    try:
        subprocess.run([ray_bin, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--num-cpus", "1",
                        "--temp-dir", str(head_tmp), "--include-dashboard", "false", "--disable-usage-stats"], env=env, check=True, capture_output=True)
        subprocess.run([ray_bin, "start", "--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                        "--temp-dir", str(node_tmp), "--disable-usage-stats"], env=env, check=True, capture_output=True)
        out = {}
        for name, engine in (("local", []), ("two_nodes", ["--engine", "ray", "--workers", "2", "--ray-address", f"127.0.0.1:{port}"])):
            g = work / f"g2-{name}"
            shutil.rmtree(g, ignore_errors=True)
            timed(cli("index", "create", str(g), "--model", v1, "--json"))
            seconds, _ = timed(cli("index", "add", str(g), "--items", str(small), *engine, "--json"), env)
            out[name] = {"seconds": seconds}
        nodes = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address='127.0.0.1:{port}', log_to_driver=False); print(len([n for n in ray.nodes() if n['Alive']]))"],
                               env=env, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    finally:
        subprocess.run(stop, env=env, capture_output=True)
    a, b = Gallery.open(work / "g2-local").vectors_by_id(), Gallery.open(work / "g2-two_nodes").vectors_by_id()
    same_ids = set(a) == set(b)
    max_diff = max((float(np.abs(a[i][1] - b[i][1]).max()) for i in a if i in b), default=float("nan"))
    log(f"two nodes ({nodes} alive): {len(b):,} rows, same ids as local: {same_ids}, max vector difference {max_diff:.2e}")
    return {"rows": rows, "nodes": int(nodes), "same_ids": same_ids, "max_abs_vector_difference": max_diff,
            "same_model_versions": all(a[i][0] == b[i][0] for i in a if i in b), **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=110_000)
    ap.add_argument("--two-node-rows", type=int, default=10_000)
    ap.add_argument("--work", type=Path, default=HERE.parents[1] / "runs" / "scale_out")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    items = make_items(args.work, args.rows)
    rows = pq.read_metadata(items).num_rows
    v1, v2 = make_models(args.work)
    local = run_engine(args.work, items, v1, v2, rows, [])
    ray = run_engine(args.work, items, v1, v2, rows, ["--engine", "ray", "--workers", "2"])
    from compatret.store.gallery import Gallery

    a, b = Gallery.open(args.work / "g-local").vectors_by_id(), Gallery.open(args.work / "g-ray").vectors_by_id()
    same = set(a) == set(b) and all(a[i][0] == b[i][0] for i in a)
    diff = max(float(np.abs(a[i][1] - b[i][1]).max()) for i in a)
    results = {
        "rows": rows, "command": "python eval/scale_out/run.py" + ("" if args.rows == 110_000 else f" --rows {args.rows}"),
        "machine": {"cpus": os.cpu_count()}, "local": local, "ray": ray,
        "ingest_ratio": ray["ingest_rows_per_s"] / local["ingest_rows_per_s"],
        "backfill_ratio": ray["backfill_rows_per_s"] / local["backfill_rows_per_s"],
        "same_rows_as_local": same, "max_abs_vector_difference": diff,
        "two_nodes": two_nodes(args.work, items, v1, min(rows, args.two_node_rows)),
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(table(results))
    print(table(results))


def table(r: dict[str, Any]) -> str:
    lo, ra, tn = r["local"], r["ray"], r["two_nodes"]
    return "\n".join([
        f"`{r['command']}`: {r['rows']:,} images (CIFAR-10 + Tiny-ImageNet-100), a 128-d CNN, {r['machine']['cpus']} cores",
        "", "| | local | ray, 2 workers | ratio (bar >= 0.9) |", "|---|---|---|---|",
        f"| `index add --items` | {lo['ingest_rows_per_s']:,.0f} rows/s ({lo['ingest_s']:.0f} s) | {ra['ingest_rows_per_s']:,.0f} rows/s ({ra['ingest_s']:.0f} s) | {r['ingest_ratio']:.2f} |",
        f"| `index backfill` | {lo['backfill_rows_per_s']:,.0f} rows/s ({lo['backfill_s']:.0f} s) | {ra['backfill_rows_per_s']:,.0f} rows/s ({ra['backfill_s']:.0f} s) | {r['backfill_ratio']:.2f} |",
        "", f"Same rows, model versions and vectors as the local engine: {r['same_rows_as_local']} (max |difference| {r['max_abs_vector_difference']:.1e}).",
        f"Two-node cluster ({tn['nodes']} nodes alive, 1 CPU each): {tn['rows']:,} rows ingested in {tn['two_nodes']['seconds']:.0f} s "
        f"(local {tn['local']['seconds']:.0f} s); same ids {tn['same_ids']}, same model versions {tn['same_model_versions']}, "
        f"max |vector difference| {tn['max_abs_vector_difference']:.1e}.", ""])


if __name__ == "__main__":
    main()
