"""Concurrent writers and readers on one gallery: every answer checked against its table version.

    python eval/concurrency/run.py                      # 20,000 rows, 4 writers + 2 readers, 120 s
    python eval/concurrency/run.py --rows 2000 --seconds 10 --out /tmp/c   # smoke scale

Writers (separate processes, spawned): an adder (new items), a deleter (random rows), an
upgrader (after a few seconds, v1 -> v2, a BCT-compatible model; then backfill batches) and
a backfiller (backfill batches whenever rows are pending). Readers (separate processes):
one follows every commit (refresh 0), one serves a snapshot refreshed every 0.5 s, as
`compatret serve` does.

Each reader query is a row's own stored vector. Its answer names the table version it was
read from (`QueryResult.table_version`); the reader then opens exactly that version of the
table and counts:
- ghosts: returned ids that the table did not hold at that version (deleted rows);
- duplicates: an id returned twice in one answer;
- missing: the probe row held at that version with that very vector, yet not returned;
- score_mismatches: a returned score that is not the cosine with the row's vector at that version.
After the run, `index verify` compares the cache with the table (verify_mismatches).
Writes results.json (and results.md) next to this file, or under --out.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("LANCEDB_LOG", "error")

HERE = Path(__file__).resolve().parent
UPGRADE_AFTER_S = 8.0


def _loop(role: str, work: Path, deadline: float, body: Any) -> None:
    """Run `body(stats)` until the deadline; count refusals and tracebacks; write the stats file."""
    from compatret.core.errors import CompatretError

    stats: dict[str, Any] = {"role": role, "writes": 0, "queries": 0, "refused": 0, "tracebacks": 0, "errors": [],
                             "ghosts": 0, "duplicates": 0, "missing": 0, "probes_checked": 0, "score_mismatches": 0,
                             "versions_seen": set()}
    while time.time() < deadline:
        try:
            body(stats)
        except CompatretError as exc:
            stats["refused"] += 1
            stats["errors"].append(f"{role}: {exc}")
        except Exception:  # noqa: BLE001  the benchmark counts what escapes, it must not die of it
            stats["tracebacks"] += 1
            stats["errors"].append(traceback.format_exc()[-1500:])
    stats["table_versions_answered_from"] = len(stats.pop("versions_seen"))
    (work / f"stats-{role}.json").write_text(json.dumps(stats))


def adder(work: Path, deadline: float, seed: int) -> None:
    from compatret.engine.service import Service
    from compatret.train.image.digits import noisy_digit_images

    images = noisy_digit_images(4000, seed=seed)
    rng = random.Random(seed)
    n = 0

    def body(stats: dict[str, Any]) -> None:
        nonlocal n
        batch = [{"id": f"add-{n + i}", "image": images[(n + i) % len(images)]} for i in range(32)]
        Service.open(work / "g").add_items(batch, batch_size=32, progress=False)
        n += 32
        stats["writes"] += 1
        time.sleep(rng.uniform(0, 0.4))

    _loop("adder", work, deadline, body)


def deleter(work: Path, deadline: float, seed: int) -> None:
    from compatret.engine.service import Service

    rng = random.Random(seed)

    def body(stats: dict[str, Any]) -> None:
        s = Service.open(work / "g")
        ids = s.gallery.scan(["id"]).column("id").to_pylist()
        s.delete(rng.sample(ids, 16))
        stats["writes"] += 1
        time.sleep(rng.uniform(0, 0.4))

    _loop("deleter", work, deadline, body)


def upgrader(work: Path, deadline: float, seed: int) -> None:
    from compatret.engine.backfill import backfill
    from compatret.engine.service import Service

    start = time.time()

    def body(stats: dict[str, Any]) -> None:
        s = Service.open(work / "g")
        if s.meta.serving.id == "v1":
            if time.time() - start < UPGRADE_AFTER_S:
                time.sleep(0.2)
                return
            s.upgrade(str(work / "models" / "v2"))
            stats["writes"] += 1
            stats["upgraded_at_s"] = time.time() - start
            return
        stats["writes"] += -(-backfill(s, limit=64, batch_size=32, progress=False).done // 32)

    _loop("upgrader", work, deadline, body)


def backfiller(work: Path, deadline: float, seed: int) -> None:
    from compatret.engine.backfill import backfill
    from compatret.engine.service import Service

    def body(stats: dict[str, Any]) -> None:
        done = backfill(Service.open(work / "g"), limit=48, batch_size=16, progress=False).done
        stats["writes"] += -(-done // 16)
        if not done:
            time.sleep(0.3)

    _loop("backfiller", work, deadline, body)


def reader(work: Path, deadline: float, seed: int, refresh: float) -> None:
    import lance

    from compatret.engine.service import Service
    from compatret.core.transforms import normalize

    rng = np.random.default_rng(seed)
    svc = Service.open(work / "g", refresh_seconds=refresh)
    v2 = str(work / "models" / "v2")  # reads both v1 and v2 rows (identity rule)
    uri = str(work / "g" / "gallery.lance")
    probes: dict[str, Any] = {"at": -1.0}

    def rows_at(ds: Any, ids: list[str]) -> dict[str, tuple[str, np.ndarray]]:
        cols = [c for c in ds.schema.names if c.startswith("vector")]
        quoted = ", ".join("'" + i.replace("'", "''") + "'" for i in ids)
        t = ds.to_table(columns=["id", "model_version", *cols], filter=f"id IN ({quoted})").to_pylist()
        return {r["id"]: (r["model_version"], np.asarray(r["vector"], np.float32)) for r in t}

    def body(stats: dict[str, Any]) -> None:
        if time.time() - probes["at"] > 2.0:  # a fresh sample of rows to ask for
            t = lance.dataset(uri).to_table(columns=["id", "vector"]).to_pylist()
            chosen = rng.choice(len(t), size=min(200, len(t)), replace=False)
            probes.update(at=time.time(), rows=[(t[i]["id"], np.asarray(t[i]["vector"], np.float32)) for i in chosen])
        pid, pvec = probes["rows"][int(rng.integers(len(probes["rows"])))]
        res = svc.query(vectors=pvec[None, :], model=v2, k=10)[0]
        stats["queries"] += 1
        at = rows_at(lance.dataset(uri, version=res.table_version), list({*res.ids, pid}))
        stats["ghosts"] += sum(1 for i in res.ids if i not in at)
        stats["duplicates"] += len(res.ids) - len(set(res.ids))
        if pid in at and np.array_equal(at[pid][1], pvec):
            stats["probes_checked"] += 1
            stats["missing"] += int(pid not in res.ids)
        q = normalize(pvec[None, :])[0]
        stats["score_mismatches"] += sum(1 for i, sc in zip(res.ids, res.scores) if i in at and abs(float(q @ at[i][1]) - sc) > 1e-4)
        stats["versions_seen"].add(res.table_version)

    _loop(f"reader-refresh-{refresh:g}", work, deadline, body)


def setup(work: Path, rows: int) -> None:
    """Models, and a gallery of `rows` distinct digit images embedded by v1."""
    from compatret.engine.service import Service
    from compatret.train.image.digits import digit_model_pair, noisy_digit_images

    v1, _ = digit_model_pair(work / "models")
    images = noisy_digit_images(rows, seed=1)
    s = Service.create(work / "g", model=v1)
    s.add_items([{"id": f"r{i}", "image": img} for i, img in enumerate(images)], batch_size=1024, progress=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--work", type=Path, default=HERE.parents[1] / "runs" / "concurrency")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    import shutil

    from compatret.store.gallery import Gallery
    from compatret.search.verify import verify

    if (args.work / "g").exists():
        shutil.rmtree(args.work / "g")
    for f in args.work.glob("stats-*.json"):
        f.unlink()
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    setup(args.work, args.rows)
    print(f"gallery of {args.rows} rows ready in {time.time() - t0:.0f} s; running {args.seconds:.0f} s", flush=True)
    ctx = mp.get_context("spawn")  # lancedb hangs in forked children
    deadline = time.time() + 15 + args.seconds  # spawned processes take a few seconds to import
    jobs = [(adder, 1), (deleter, 2), (upgrader, 3), (backfiller, 4)]
    procs = [ctx.Process(target=fn, args=(args.work, deadline, seed)) for fn, seed in jobs]
    procs += [ctx.Process(target=reader, args=(args.work, deadline, 10 + i, refresh)) for i, refresh in enumerate((0.0, 0.5))]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    stats = [json.loads(f.read_text()) for f in sorted(args.work.glob("stats-*.json"))]
    died = [p.exitcode for p in procs if p.exitcode != 0]
    report = verify(Gallery.open(args.work / "g"))
    total = {k: sum(s[k] for s in stats) for k in ("writes", "queries", "ghosts", "missing", "duplicates", "tracebacks",
                                                   "score_mismatches", "probes_checked", "refused")}
    results = {
        "rows": args.rows, "seconds": args.seconds, "writers": 4, "readers": 2, **total,
        "verify_mismatches": len(report.mismatches), "processes_died": len(died),
        "final_rows": report.rows, "final_rows_by_version": Gallery.open(args.work / "g").rows_by_version(),
        "per_process": {s["role"]: {k: v for k, v in s.items() if k not in ("role", "errors")} for s in stats},
        "first_errors": [e for s in stats for e in s["errors"]][:10],
        "command": "python eval/concurrency/run.py" + ("" if (args.rows, args.seconds) == (20_000, 120.0) else f" --rows {args.rows} --seconds {args.seconds:g}"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    keys = ["writes", "queries", "probes_checked", "ghosts", "missing", "duplicates", "score_mismatches", "tracebacks", "refused", "verify_mismatches"]
    md = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys), "| " + " | ".join(str(results[k]) for k in keys) + " |"]
    (args.out / "results.md").write_text(f"`{results['command']}`: {args.rows} rows, {args.seconds:g} s\n\n" + "\n".join(md) + "\n")
    print(json.dumps({k: results[k] for k in keys}))


if __name__ == "__main__":
    main()
