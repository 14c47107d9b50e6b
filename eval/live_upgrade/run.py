"""Live upgrades, measured: crash safety, ANN recall/speed, service under load, backfill throughput.

    python eval/live_upgrade/run.py                  # all parts that are implemented here
    python eval/live_upgrade/run.py --parts crash ann

Writes eval/live_upgrade/results.json (merging with parts measured earlier) and results.md.
The `curve` part reads the galleries and models that eval/compat_text/run.py builds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("LANCEDB_LOG", "error")

from compatret import ModelVersion  # noqa: E402
from compatret.core.config import dataset
from compatret.data.images import load_digits_splits  # noqa: E402
from compatret.encoders import load_encoder  # noqa: E402
from compatret.encoders.base import write_encoder_config  # noqa: E402
from compatret.engine.backfill import backfill
from compatret.store.gallery import Gallery
from compatret.search.kernels import make_kernel
from compatret.engine.service import Service
from compatret.search.verify import verify
from compatret.train.image.digits import digit_model_pair
from compatret.core.transforms import normalize

HERE = Path(__file__).resolve().parent
CACHE = HERE.parents[1] / ".cache"
ENV = {**os.environ, "LANCEDB_LOG": "error"}


def digit_models(work: Path) -> tuple[str, str, list[dict[str, Any]]]:
    """Small real image models (v1, BCT-compatible v2) and all 1,797 digits as items."""
    v1, v2 = digit_model_pair(work)
    train, test = load_digits_splits(test_fraction=0.3)
    items = [{"id": f"d{i}", "image": img} for i, img in enumerate(train.images + test.images)]
    return v1, v2, items


def rows_of(path: Path) -> dict[str, tuple[str, np.ndarray]]:
    """id -> (model version, stored vector) of every row of a gallery, from the table."""
    return Gallery.open(path).vectors_by_id()


def vectors_of(path: Path) -> dict[str, np.ndarray]:
    """id -> stored vector of every row of a gallery."""
    return {i: vec for i, (_, vec) in rows_of(path).items()}


def _first_commit(path: Path, start_version: int, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """Wait until the run commits its first batch (the table version moves); False if it ended first."""
    import lance

    uri = str(path / "gallery.lance")
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if lance.dataset(uri).latest_version > start_version:
            return True
        time.sleep(0.01)
    return False


def crash(work: Path, kills: int = 20, batch_sizes: tuple[int, ...] = (1, 64)) -> dict[str, dict[str, Any]]:
    """kill -9 `index backfill` at random moments after each run's first commit, resume, compare.

    Each kill is timed from the moment the run's first batch is committed (the table version
    moves), then lands at a random point of the following ~3 batches, so kills fall while
    batches are being embedded and committed, not during start-up. The killed gallery is then
    finished by one more run and compared, bit for bit, with an uninterrupted run.
    """
    import lance

    v1, v2, digits = digit_models(work)
    out: dict[str, dict[str, Any]] = {}
    for bs in batch_sizes:
        copies = 1 if bs < 16 else 4  # 1,797 rows at batch size 1; 7,188 at 64: room for 20 kills either way
        items = [{**it, "id": f"{it['id']}-{copy}"} for copy in range(copies) for it in digits]
        for name in ("killed", "clean"):
            s = Service.create(work / f"{name}-{bs}", model=v1)
            s.add_items(items, progress=False)
            s.upgrade(v2)
        clean = [sys.executable, "-m", "compatret", "index", "backfill", str(work / f"clean-{bs}"), "--batch-size", str(bs), "--json"]
        t0 = time.perf_counter()
        subprocess.run(clean, env=ENV, check=True, capture_output=True)  # same batch size: same kernels, same bits
        per_batch = (time.perf_counter() - t0 - 3.0) / max(1, len(items) // bs)  # start-up ~3 s
        rng = np.random.default_rng(bs)
        killed = work / f"killed-{bs}"
        cmd = [sys.executable, "-m", "compatret", "index", "backfill", str(killed), "--batch-size", str(bs), "--json"]
        landed, after_commit = 0, []
        for n in range(kills):
            start = lance.dataset(str(killed / "gallery.lance")).latest_version
            proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if not _first_commit(killed, start, proc):
                proc.wait()
                break
            delay = float(rng.uniform(0, 3 * max(per_batch, 0.01)))
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                landed += 1
                after_commit.append(delay)
            proc.wait()
            print(f"[crash] batch {bs}, kill {n + 1} at +{delay * 1000:.0f} ms: {Gallery.open(killed).rows_by_version()}", flush=True)
        subprocess.run(cmd, env=ENV, check=True, capture_output=True)
        a, b = rows_of(killed), rows_of(work / f"clean-{bs}")
        out[f"batch_{bs}"] = {
            "kills": landed,
            "rows": len(a),
            "lost": len(set(b) - set(a)),
            "duplicated": Gallery.open(killed).count() - len(a),
            "mismatched": sum(1 for i in set(a) & set(b) if a[i][0] != b[i][0] or not np.array_equal(a[i][1], b[i][1])),
            "max_abs_diff": float(max(np.abs(a[i][1] - b[i][1]).max() for i in set(a) & set(b))),
            "seconds_per_batch": per_batch,
            "kill_ms_after_first_commit": [round(d * 1000, 1) for d in after_commit],
            "verify_ok": verify(Gallery.open(killed)).ok,
        }
    return out


def ann(work: Path) -> dict[str, dict[str, float]]:
    """IVF (compatret's default above 200k rows) vs exact search: recall@10 and speed-up."""
    out = {}
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(2000, 384)).astype(np.float32)
    x = np.empty((1_000_000, 384), np.float32)
    for s in range(0, len(x), 100_000):
        x[s : s + 100_000] = normalize(centers[rng.integers(0, 2000, 100_000)] + 0.35 * rng.normal(size=(100_000, 384)).astype(np.float32))
    q = normalize(centers[rng.integers(0, 2000, 1000)] + 0.35 * rng.normal(size=(1000, 384)).astype(np.float32))
    out["synthetic_1m"] = _ann_pair(x, q, "ivf")
    docs = np.load(CACHE / "scifact_docs.npy")
    queries = [json.loads(line)["text"] for line in (dataset("scifact") / "queries.jsonl").open()][:1000]
    qv = load_encoder("minilm-l6").encode_queries(queries)
    out["scifact"] = _ann_pair(docs, qv, "ivf")
    return out


def _ann_pair(x: np.ndarray, q: np.ndarray, kind: str) -> dict[str, float]:
    t0 = time.perf_counter()
    approx = make_kernel("faiss", x, ann=kind)
    build = time.perf_counter() - t0
    exact = make_kernel("faiss", x)
    t0 = time.perf_counter()
    _, ei = exact.search(q, 10)
    t_exact = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, ai = approx.search(q, 10)
    t_ann = time.perf_counter() - t0
    recall = float(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(ai, ei)]))
    print(f"[ann] {len(x)} rows: recall@10 {recall:.4f}, exact {t_exact:.2f}s, {kind} {t_ann:.3f}s, build {build:.0f}s", flush=True)
    return {"rows": float(len(x)), "recall_at_10": recall, "speedup": t_exact / t_ann, "exact_s": t_exact, "ann_s": t_ann, "build_s": build}


def _client(url: str, key: str, n: int, seed: int) -> tuple[list[float], int]:
    """One HTTP client (its own process): n vector queries in a row over one keep-alive connection;
    latencies (ms) and failures. The standard library's http.client: a light client, so the
    2 cores go to the server rather than to request building."""
    import http.client
    from urllib.parse import urlparse

    u = urlparse(url)
    vecs = np.random.default_rng(seed).normal(size=(64, 32))
    bodies = [json.dumps({"vectors": [v.tolist()], "k": 10}).encode() for v in vecs]
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    lat, failed = [], 0
    for i in range(n):
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/query", body=bodies[i % 64], headers=headers)
            r = conn.getresponse()
            payload = r.read()
            failed += int(r.status != 200 or len(json.loads(payload)["results"][0]["ids"]) != 10)
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            failed += 1
            conn.close()
            conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        lat.append((time.perf_counter() - t0) * 1000)
    conn.close()
    return lat, failed


def _clients(pool: Any, url: str, key: str, clients: int, queries: int) -> dict[str, float]:
    """`queries` split over `clients` concurrent client processes: throughput, p50/p99, failures."""
    t0 = time.perf_counter()
    parts = pool.starmap(_client, [(url, key, queries // clients, c) for c in range(clients)])
    seconds = time.perf_counter() - t0
    lat = [x for p in parts for x in p[0]]
    return {"clients": clients, "queries": len(lat), "failed": sum(p[1] for p in parts), "qps": len(lat) / seconds,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def load(work: Path, queries: int = 10_000, clients: int = 8, workers: int = 2) -> dict[str, Any]:
    """HTTP queries to `compatret serve --workers 2` (with an API key) from 1 and from 8 concurrent
    client processes, idle, then 10,000 queries from 8 clients while an upgrade and a backfill run.

    One server process is bound by its interpreter lock (HTTP parsing and validation are Python),
    so on this 2-core machine the second core serves through a second worker process."""
    import multiprocessing as mp

    import httpx

    v1, v2, items = digit_models(work)
    items = [{**it, "id": f"{it['id']}-{copy}"} for copy in range(4) for it in items]  # 7,188 rows: a longer backfill
    s = Service.create(work / "g", model=v1)
    s.add_items(items, progress=False)
    key = "load-benchmark-key-0123456789"
    port = 18000 + os.getpid() % 1000
    server = subprocess.Popen([sys.executable, "-m", "compatret", "serve", str(work / "g"), "--port", str(port), "--refresh-seconds", "0.2",
                               "--models-dir", str(Path(v2).parent), "--workers", str(workers)],
                              env={**ENV, "COMPATRET_API_KEY": key}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(f"{url}/health")
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    with mp.get_context("spawn").Pool(clients) as pool:
        _clients(pool, url, key, clients, 8 * clients)  # warm: kernels built, client processes started
        one = _clients(pool, url, key, 1, 2000)
        many = _clients(pool, url, key, clients, 2000)
        print(f"[load] idle: 1 client {one['qps']:.0f} q/s, {clients} clients {many['qps']:.0f} q/s", flush=True)
        httpx.post(f"{url}/upgrade", json={"model": Path(v2).name}, headers={"Authorization": f"Bearer {key}"}).raise_for_status()
        job = subprocess.Popen([sys.executable, "-m", "compatret", "index", "backfill", str(work / "g"), "--batch-size", "16", "--json"],
                               env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        busy = _clients(pool, url, key, clients, queries)
    backfill_running_to_end = job.poll() is None
    job.wait()
    server.terminate()
    server.wait()
    return {"queries": busy["queries"], "failed": busy["failed"] + one["failed"] + many["failed"], "clients": clients, "workers": workers,
            "p50_ms": busy["p50_ms"], "p99_ms": busy["p99_ms"], "qps": busy["qps"],
            "idle_one_client": one, "idle_many_clients": many, "idle_speedup": many["qps"] / one["qps"],
            "backfill_ran_throughout": backfill_running_to_end}


def throughput(work: Path, n_docs: int = 1000) -> float:
    """Rows/s of `index backfill` over the raw encoding rate of the same model, same docs."""
    from compatret.encoders.registry import _minilm_l3_onnx, _minilm_l6_dir

    docs = [json.loads(line) for _, line in zip(range(n_docs), (dataset("scifact") / "corpus.jsonl").open())]
    items = [{"id": d["_id"], "title": d["title"], "text": d["text"]} for d in docs]
    model = work / "minilm-l3-copy"  # the same weights as a compatible (identity) descendant
    model.mkdir()
    shutil.copyfile(_minilm_l3_onnx(), model / "model.onnx")
    shutil.copyfile(_minilm_l6_dir() / "tokenizer.json", model / "tokenizer.json")
    write_encoder_config(model, "onnx", onnx="model.onnx", tokenizer="tokenizer.json")
    ModelVersion("minilm-l3-copy", 384, "text", parent=load_encoder("minilm-l3").version, method="copy").save(model)
    s = Service.create(work / "g", model="minilm-l3")
    s.add_items(items, progress=False)
    s.upgrade(str(model))
    enc = load_encoder(str(model))
    t0 = time.perf_counter()
    enc.encode_items(items, batch_size=64)
    raw = n_docs / (time.perf_counter() - t0)
    report = backfill(Service.open(work / "g"), batch_size=64, progress=False)
    print(f"[throughput] raw {raw:.1f} docs/s, backfill {report.rows_per_s:.1f} rows/s", flush=True)
    return report.rows_per_s / raw


CURVE_POINTS = (0, 10, 25, 50, 75, 100)
BACKFILL_BATCH = 64  # `index backfill`'s default --batch-size
KEYS = {"throughput": "backfill_throughput_ratio", "curve": "backfill_curve", "incompatible": "backfill_curve", "spread": "backfill_curve_spread"}


def curve(work: Path) -> dict[str, list[list[float]]]:
    """nDCG@10 on SciFact test while a MiniLM-L6 gallery is backfilled with the BT² text model.

    Uses the galleries and models of eval/compat_text (run it first with --only bt2 star).
    A row's new vector is read from the full BT² gallery — the exact vector `index backfill`
    would compute — so each point costs one evaluation, not a re-embedding; rows are taken in
    the order `index backfill` takes them at its default --batch-size (`plan_order`, blocks of
    `BACKFILL_BATCH` consecutive rows shuffled). The incompatible contrast is `incompatible()`.
    """
    bench = CurveBench(work)
    return {name: bench.points(name, order, merge, CURVE_POINTS)
            for name, order, merge in (("random", "random", "raw"), ("uncertainty", "uncertainty", "raw"), ("random_shared_merge", "random", "shared"))}


def spread(work: Path, seeds: int = 10) -> dict[str, Any]:
    """How much one point of the random-order curve depends on which blocks were drawn: the same
    backfill under `seeds` other shuffles (what another serving model's id would give)."""
    bench = CurveBench(work)
    runs = [bench.points(f"seed{k}", "random", "raw", SPREAD_POINTS, seed=f"spread-{k}") for k in range(seeds)]
    out: dict[str, Any] = {"seeds": seeds, "start": runs[0][0][1]}
    for i, pct in enumerate(SPREAD_POINTS[1:], start=1):
        scores = np.array([r[i][1] for r in runs])
        out[f"{pct}%"] = {"min": float(scores.min()), "mean": float(scores.mean()), "max": float(scores.max()), "scores": scores.tolist()}
    return out


SPREAD_POINTS = (0, 10, 50)


class CurveBench:
    """Copies of the eval/compat_text MiniLM-L6 gallery upgraded to its BT² model, backfilled
    from the full BT² gallery's stored vectors and scored at given fractions."""

    def __init__(self, work: Path) -> None:
        from compatret.core.config import index_home
        from compatret.data.beir import load_beir

        base = index_home() / "compat_text"
        self.work, self.old_g, self.model = work, base / "galleries" / "minilm-l6", base / "models" / "bt2"
        self.data = load_beir(dataset("scifact"))
        self.new_vecs = vectors_of(base / "galleries" / "bt2")

    def points(self, name: str, order: str, merge: str, fractions: tuple[int, ...], seed: str | None = None) -> list[list[float]]:
        from compatret.engine.runs import evaluate_pair
        from compatret.store.pending import pending_rows
        from compatret.engine.backfill import plan_order

        g = self.work / name
        shutil.copytree(self.old_g, g)
        s = Service.open(g)
        s.upgrade(str(self.model))
        with s.gallery.writing("benchmark: merge policy"):
            s.gallery.set_meta(replace(s.meta, merge=merge))
        queue = plan_order(s, pending_rows(s.gallery).ids, order, block=BACKFILL_BATCH, seed=seed)
        points, done = [], 0
        for pct in fractions:
            target = round(pct / 100 * len(queue))
            for c in range(done, target, 512):
                ids = queue[c : min(c + 512, target)]
                with s.gallery.writing("benchmark: backfill from stored vectors"):
                    s.gallery.update_vectors(ids, np.stack([self.new_vecs[i] for i in ids]), s.meta.serving)
            done = target
            score = evaluate_pair(str(self.model), g, self.data, "test")["ndcg_at_10"]
            points.append([pct, score])
            print(f"[curve] {name} {pct}%: nDCG@10 {score:.4f}", flush=True)
            s = Service.open(g)
        shutil.rmtree(g)
        return points


def incompatible(work: Path) -> list[list[float]]:
    """The contrast: a rolling re-index in place with a model trained independently of the old one
    (paraphrase-MiniLM-L3-v2, same 384 dims, unrelated space). Rows switch from MiniLM-L6 to L3
    vectors and L3 queries search them as one space — what compatret refuses to do."""
    from compatret.core.config import index_home
    from compatret.data.beir import load_beir
    from compatret.engine.runs import evaluate_pair
    from compatret.engine.backfill import _random_key

    data = load_beir(dataset("scifact"))
    old = vectors_of(index_home() / "compat_text" / "galleries" / "minilm-l6")
    docs = data.items()
    l3 = dict(zip([d["id"] for d in docs], load_encoder("minilm-l3").encode_items(docs, progress=True)))
    ids = sorted(old, key=lambda i: _random_key("rolling-reindex", i))
    points = []
    for pct in CURVE_POINTS:
        moved = set(ids[: round(pct / 100 * len(ids))])
        g = work / f"incompatible-{pct}"
        mixed = Service.create(g, dim=384, version_id="rolling-reindex")
        mixed.add_vectors(np.stack([l3[i] if i in moved else old[i] for i in ids]), ids=ids)
        score = evaluate_pair("minilm-l3", g, data, "test", unchecked=True)["ndcg_at_10"]
        points.append([pct, score])
        print(f"[curve] incompatible {pct}%: nDCG@10 {score:.4f}", flush=True)
    return points


def _plot_curve(curves: dict[str, list[list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, pts in curves.items():
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", label=name)
    ax.set_xlabel("rows backfilled (%)")
    ax.set_ylabel("nDCG@10 (SciFact test)")
    ax.set_title("Backfill MiniLM-L6 -> BT² text model, queries keep running")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", nargs="*", default=["crash", "ann", "load", "throughput"])
    args = ap.parse_args()
    out_path = HERE / "results.json"
    results: dict[str, Any] = json.loads(out_path.read_text()) if out_path.exists() else {}
    CACHE.mkdir(exist_ok=True)
    for part in args.parts:
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            t0 = time.perf_counter()
            if part == "crash":
                results["crash"] = crash(Path(tmp))
            elif part == "ann":
                results["ann"] = ann(Path(tmp))
            elif part == "load":
                results["load"] = load(Path(tmp))
            elif part == "curve":
                results["backfill_curve"] = {**results.get("backfill_curve", {}), **curve(Path(tmp))}
            elif part == "spread":
                results["backfill_curve_spread"] = spread(Path(tmp))
            elif part == "incompatible":
                results.setdefault("backfill_curve", {})["incompatible"] = incompatible(Path(tmp))
            elif part == "throughput":
                results["backfill_throughput_ratio"] = throughput(Path(tmp))
            else:
                raise SystemExit(f"unknown part {part!r}")
            print(f"[{part}] done in {time.perf_counter() - t0:.0f} s: {json.dumps(results.get(KEYS.get(part, part)))}", flush=True)
        results["machine"] = {"cpus": os.cpu_count(), "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS")}
        out_path.write_text(json.dumps(results, indent=2))  # after each part: a later failure keeps it
    if results.get("backfill_curve"):
        _plot_curve(results["backfill_curve"], HERE / "backfill_curve.png")
    (HERE / "results.md").write_text(_table(results))
    print(_table(results))


def _table(r: dict[str, Any]) -> str:
    lines = ["| check | result |", "|---|---|"]
    for name, c in r.get("crash", {}).items():
        lines.append(f"| kill -9 during backfill ({name.replace('_', ' ')}), timed from each run's first commit, resumed | "
                     f"{c['kills']} kills, {c['rows']} rows: {c['lost']} lost, {c['duplicated']} duplicated, "
                     f"{c['mismatched']} vectors differ from an uninterrupted run; verify {'ok' if c['verify_ok'] else 'MISMATCH'} |")
    if "ann" in r:
        for k, v in r["ann"].items():
            lines.append(f"| IVF on {k} ({int(v['rows']):,} rows) | recall@10 {v['recall_at_10']:.4f}, {v['speedup']:.1f}x exact throughput |")
    if "load" in r:
        x = r["load"]
        one, many = x["idle_one_client"], x["idle_many_clients"]
        lines.append(f"| {x['queries']:,} HTTP queries from {x['clients']} clients during upgrade + backfill | {x['failed']} failed; "
                     f"{x['qps']:,.0f} q/s, p50 {x['p50_ms']:.1f} ms, p99 {x['p99_ms']:.1f} ms |")
        lines.append(f"| idle, 1 client vs {x['clients']} clients (2,000 queries each) | {one['qps']:,.0f} vs {many['qps']:,.0f} q/s "
                     f"({x['idle_speedup']:.2f}x); p50 {one['p50_ms']:.1f} / {many['p50_ms']:.1f} ms, p99 {one['p99_ms']:.1f} / {many['p99_ms']:.1f} ms |")
    for name, pts in r.get("backfill_curve", {}).items():
        lines.append(f"| backfill curve, {name} order | " + ", ".join(f"{int(p)} %: {v:.3f}" for p, v in pts) + " |")
    if "backfill_curve_spread" in r:
        x = r["backfill_curve_spread"]
        for pct in SPREAD_POINTS[1:]:
            p = x[f"{pct}%"]
            lines.append(f"| backfill curve, random order at {pct} % over {x['seeds']} block shuffles (start {x['start']:.3f}) | "
                         f"min {p['min']:.4f}, mean {p['mean']:.4f}, max {p['max']:.4f} |")
    if "backfill_throughput_ratio" in r:
        lines.append(f"| backfill rows/s over raw encoding rate | {r['backfill_throughput_ratio']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
