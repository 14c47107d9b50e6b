"""Compressed codes for the plan to 1B vectors: IVF-PQ and OPQ at 1M and 10M rows, 128-d and 384-d.

    python eval/scale/codes.py                                  # 1M and 10M, 128-d and 384-d (about 1 h on 2 cores)
    python eval/scale/codes.py --rows 1000000 --dims 128        # one configuration

Data: the clustered vectors of eval/scale/run.py (4,096 Gaussian clusters, noise 0.6 per dim,
L2-normalised), written once per dim to a memory-mapped .npy under --work; the 1M sets are the
first 1M rows of the 10M sets. 1,000 test queries from the same distribution; ground truth by
exact faiss flat search, streamed in blocks.

Per configuration (keys of results.json, one entry per "<rows>x<dim>"):
- `ivfpq`: compatret's kernel (`--index ivfpq`: build_kernel with its sub-quantisers, bits,
  lists and nprobe calibration), searched as a gallery searches it: candidates from the codes,
  re-ranked on the stored float vectors (memory-mapped); recall@10 with and without the re-rank,
  queries/s (1,000 batched), build seconds (train + add + calibration), index bytes per vector;
- `opq`: faiss OPQ rotation + the same IVF-PQ shape (index_factory "OPQ{M},IVF{nlist},PQ{M}x{bits}",
  10 rotation iterations), at compatret's calibrated nprobe and re-rank depth; train and add seconds;
- `ivf`: compatret's float IVF (`--index ivf`) where its vectors fit in memory beside the data
  (1M rows), for the memory/recall trade;
- `exact_qps`: faiss flat over the same vectors.
Also `encode`: rows/s of MiniLM-L6 (the offline all-MiniLM-L6-v2) on SciFact abstracts on this
CPU, the rate the 1B extrapolation in plan.md uses for a backfill.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import K, exact_topk, log, make_data  # noqa: E402

BLOCK = 1_000_000


def parts_of(x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The vectors as 1M-row labelled parts (positions as labels): no full copy in memory."""
    return [(np.arange(s, min(s + BLOCK, len(x)), dtype=np.int64), x[s : s + BLOCK]) for s in range(0, len(x), BLOCK)]


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K].tolist()) & set(e.tolist())) / K for f, e in zip(found, exact)]))


def invlists_bytes(index: Any) -> int:
    """Bytes an IVF index holds: codes and ids in its lists, plus the coarse centroids."""
    return int(index.ntotal * (index.code_size + 8) + index.nlist * index.d * 4)


def timed_search(search: Any, q: np.ndarray) -> tuple[np.ndarray, float]:
    search(q[:10])  # warm
    t0 = time.perf_counter()
    found = search(q)
    return found, len(q) / (time.perf_counter() - t0)


def check_ivfpq(x: np.ndarray, q: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    from compatret.search.kernels import build_kernel, candidates_for, rerank

    lookup = lambda labels: np.asarray(x[np.sort(labels)])[np.argsort(np.argsort(labels))]  # noqa: E731  (sorted reads of the memmap)
    t0 = time.perf_counter()
    kernel = build_kernel("faiss", "ivfpq", x.shape[1], parts_of(x), lookup)
    build_s = time.perf_counter() - t0
    index = kernel.index  # type: ignore[attr-defined]
    raw = kernel.search(q, K)[1]
    found, qps = timed_search(lambda qq: rerank(qq, kernel.search(qq, candidates_for(K, kernel.rerank))[1], lookup, K)[1], q)
    out = {"build_s": build_s, "nlist": float(index.nlist), "nprobe": float(index.nprobe), "code_bytes": float(index.code_size),
           "index_bytes_per_vector": invlists_bytes(index) / len(x), "recall_at_10": recall(found, exact),
           "recall_at_10_codes_only": recall(raw, exact), "qps": qps, "candidates": float(candidates_for(K, kernel.rerank))}
    log(f"  ivfpq: {out['code_bytes']:.0f} B codes, nprobe {index.nprobe}/{index.nlist}, recall@10 {out['recall_at_10']:.3f} "
        f"(codes only {out['recall_at_10_codes_only']:.3f}), {qps:,.0f} q/s, build {build_s:.0f} s")
    return out


def check_opq(x: np.ndarray, q: np.ndarray, exact: np.ndarray, nprobe: int, candidates: int) -> dict[str, float]:
    import faiss

    from compatret.search.kernels import ivf_lists, pq_bits, pq_bytes, rerank, sample_parts

    dim, n = x.shape[1], len(x)
    m, bits, nlist = pq_bytes(dim), pq_bits(n), ivf_lists(n)
    index = faiss.index_factory(dim, f"OPQ{m},IVF{nlist},PQ{m}x{bits}", faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.niter = 10
    faiss.downcast_VectorTransform(index.chain.at(0)).niter = 10  # OPQ rotation: 10 alternations (faiss' default 50 takes ~10 min at 384-d here)
    t0 = time.perf_counter()
    index.train(sample_parts(parts_of(x), max(40 * nlist, 64 << bits), np.random.default_rng(0)))
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _, part in parts_of(x):
        index.add(np.ascontiguousarray(part))
    add_s = time.perf_counter() - t0
    ivf.nprobe = nprobe
    lookup = lambda labels: np.asarray(x[np.sort(labels)])[np.argsort(np.argsort(labels))]  # noqa: E731
    raw = index.search(q, K)[1]
    found, qps = timed_search(lambda qq: rerank(qq, index.search(qq, candidates)[1], lookup, K)[1], q)
    out = {"train_s": train_s, "add_s": add_s, "nprobe": float(nprobe), "code_bytes": float(ivf.code_size),
           "index_bytes_per_vector": (invlists_bytes(ivf) + dim * dim * 4) / n, "recall_at_10": recall(found, exact),
           "recall_at_10_codes_only": recall(raw, exact), "qps": qps}
    log(f"  opq: recall@10 {out['recall_at_10']:.3f} (codes only {out['recall_at_10_codes_only']:.3f}), {qps:,.0f} q/s, "
        f"train {train_s:.0f} s, add {add_s:.0f} s")
    return out


def check_ivf(x: np.ndarray, q: np.ndarray, exact: np.ndarray) -> dict[str, float]:
    from compatret.search.kernels import build_kernel

    t0 = time.perf_counter()
    kernel = build_kernel("faiss", "ivf", x.shape[1], parts_of(x))
    build_s = time.perf_counter() - t0
    index = kernel.index  # type: ignore[attr-defined]
    found, qps = timed_search(lambda qq: kernel.search(qq, K)[1], q)
    out = {"build_s": build_s, "nprobe": float(index.nprobe), "index_bytes_per_vector": invlists_bytes(index) / len(x),
           "recall_at_10": recall(found, exact), "qps": qps}
    log(f"  ivf (float): recall@10 {out['recall_at_10']:.3f}, {qps:,.0f} q/s, build {build_s:.0f} s")
    return out


def check_encode(n: int = 2000) -> dict[str, float]:
    """MiniLM-L6 rows/s on SciFact abstracts (title + text, as `index add` embeds them) on this CPU."""
    from compatret.core.config import dataset
    from compatret.encoders.registry import load_encoder

    docs = [json.loads(line) for line in (dataset("scifact") / "corpus.jsonl").read_text().splitlines()[:n]]
    items = [{"text": f"{d['title']} {d['text']}"} for d in docs]
    enc = load_encoder("minilm-l6")
    enc.encode_items(items[:64])
    t0 = time.perf_counter()
    enc.encode_items(items, batch_size=64)
    rate = n / (time.perf_counter() - t0)
    log(f"  MiniLM-L6 on SciFact abstracts: {rate:,.0f} rows/s")
    return {"rows": float(n), "rows_per_s": rate}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="*", default=[1_000_000, 10_000_000])
    ap.add_argument("--dims", type=int, nargs="*", default=[128, 384])
    ap.add_argument("--skip", nargs="*", default=[], choices=["opq", "ivf", "encode"])
    ap.add_argument("--work", type=Path, default=HERE.parents[1] / "runs" / "scale")
    ap.add_argument("--out", type=Path, default=HERE / "codes.json")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["command"] = "python eval/scale/codes.py"
    if "encode" not in args.skip:
        results["encode"] = check_encode()
    for dim in args.dims:
        x_path, q, _ = make_data(args.work, max(args.rows), dim)
        full = np.load(x_path, mmap_mode="r")
        for rows in sorted(args.rows):
            x = full[:rows]
            log(f"{rows:,} x {dim}")
            exact, exact_s = exact_topk(x, q)
            entry: dict[str, Any] = {"rows": rows, "dim": dim, "exact_qps": len(q) / exact_s, "float_bytes_per_vector": 4 * dim}
            entry["ivfpq"] = check_ivfpq(x, q, exact)
            if "opq" not in args.skip:
                entry["opq"] = check_opq(x, q, exact, int(entry["ivfpq"]["nprobe"]), int(entry["ivfpq"]["candidates"]))
            if "ivf" not in args.skip and rows * dim * 4 <= 2 * 2**30:
                entry["ivf"] = check_ivf(x, q, exact)
            results[f"{rows}x{dim}"] = entry
            args.out.write_text(json.dumps(results, indent=2) + "\n")  # after each configuration
    print(table(results))


def table(r: dict[str, Any]) -> str:
    lines = ["| rows x dim | kernel | bytes/vector in memory | recall@10 (codes only) | q/s | build or train + add |", "|---|---|---|---|---|---|"]
    for key, e in r.items():
        if not isinstance(e, dict) or "ivfpq" not in e:
            continue
        shape = f"{e['rows']:,} x {e['dim']}"
        p = e["ivfpq"]
        lines.append(f"| {shape} | compatret `ivfpq` ({p['code_bytes']:.0f} B codes, nprobe {p['nprobe']:.0f}/{p['nlist']:.0f}, re-rank {p['candidates']:.0f}) | "
                     f"{p['index_bytes_per_vector']:.0f} | {p['recall_at_10']:.3f} ({p['recall_at_10_codes_only']:.3f}) | {p['qps']:,.0f} | {p['build_s']:.0f} s |")
        if "opq" in e:
            o = e["opq"]
            lines.append(f"| {shape} | OPQ + same IVF-PQ, same nprobe and re-rank | {o['index_bytes_per_vector']:.0f} | "
                         f"{o['recall_at_10']:.3f} ({o['recall_at_10_codes_only']:.3f}) | {o['qps']:,.0f} | {o['train_s']:.0f} + {o['add_s']:.0f} s |")
        if "ivf" in e:
            v = e["ivf"]
            lines.append(f"| {shape} | compatret `ivf` (float) | {v['index_bytes_per_vector']:.0f} | {v['recall_at_10']:.3f} | {v['qps']:,.0f} | {v['build_s']:.0f} s |")
        lines.append(f"| {shape} | exact (faiss flat) | {e['float_bytes_per_vector']} | 1.000 | {e['exact_qps']:,.1f} | - |")
    if "encode" in r:
        lines.append(f"\nMiniLM-L6 on this CPU (SciFact abstracts): {r['encode']['rows_per_s']:,.0f} rows/s.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
