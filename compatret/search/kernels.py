"""Inner-product search kernels (faiss CPU/GPU exact or IVF/IVF-PQ/HNSW, torch, numpy) behind one interface.

Every kernel returns int64 *labels* that its caller chose when adding vectors (a gallery uses
Lance row addresses; `make_kernel` uses row positions), and can be updated in place:
`add` appends labelled vectors, `remove` drops labels (or whole label ranges). A kernel that
cannot remove (HNSW, faiss GPU) says so and is rebuilt by its owner.

IVF-PQ kernels hold product-quantised codes (a byte per 4 dims: 16x smaller than float32);
their candidates are re-scored on the stored float vectors (`rerank`), which the caller looks
up by label, so the compressed codes decide only which rows are looked at.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from compatret.core.device import torch_cuda

if TYPE_CHECKING:
    import faiss

KERNELS = ("auto", "faiss", "faiss-gpu", "torch", "numpy")
ANN_KINDS = ("auto", "flat", "ivf", "ivfpq", "hnsw")
IVF_KINDS = ("ivf", "ivfpq")  # trained kernels: nprobe calibrated, retrained when their group grows
FLAT_BELOW = 200_000  # rows: exact search is fast enough below this, and loses nothing
TARGET_RECALL = 0.97  # IVF nprobe is the smallest reaching this recall@10 on stored rows (margin over 0.95)

RERANK_MAX = 100  # ivfpq: at most this many candidates per requested hit are re-scored on the stored vectors
RERANK_MIN = 100  # ... and at least this many in all
Part = tuple[np.ndarray, np.ndarray]  # (labels int64 [n], vectors float32 [n, d])
Lookup = Callable[[np.ndarray], np.ndarray]  # labels int64 [n] -> their stored float32 vectors [n, d]


class Kernel(Protocol):
    """Top-k inner product over labelled vectors; -1 labels pad rows with fewer than k hits."""

    name: str

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    @property
    def ntotal(self) -> int: ...

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, labels: np.ndarray, ranges: Sequence[tuple[int, int]] = ()) -> bool:
        """Drop these labels and every label in [lo, hi) of each range; False if unsupported."""
        ...


def faiss_gpus() -> int:
    import faiss

    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def _f32(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


class FaissKernel:
    """A faiss index with labels: IndexIDMap2 over a flat or HNSW index, or an IVF index.

    `gpu` copies it to every GPU faiss sees: edits go to the CPU index, then it is copied again.
    """

    def __init__(self, index: faiss.Index, gpu: bool = False, trained_on: int = 0, rerank: int = 0) -> None:
        self.index = index
        self.gpu = gpu
        self.trained_on = trained_on  # rows the IVF lists were trained on (0: nothing trained)
        self.rerank = rerank  # IVF-PQ: candidates re-ranked per requested hit (calibrated; 0: no re-rank)
        self.name = "faiss-gpu" if gpu else "faiss-cpu"
        self._to_device()

    def _to_device(self) -> None:
        import faiss

        self._search_index = faiss.index_cpu_to_all_gpus(self.index) if self.gpu else self.index

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.ntotal)
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        return self._search_index.search(_f32(queries), k)

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        if len(labels):
            self.index.add_with_ids(_f32(vectors), np.ascontiguousarray(labels, dtype=np.int64))
            if self.gpu:
                self._to_device()

    def remove(self, labels: np.ndarray, ranges: Sequence[tuple[int, int]] = ()) -> bool:
        import faiss

        if isinstance(_inner(self.index), faiss.IndexHNSW):
            return False
        keep: list[faiss.IDSelector] = [faiss.IDSelectorRange(int(lo), int(hi)) for lo, hi in ranges]
        if len(labels):
            keep.append(faiss.IDSelectorBatch(np.ascontiguousarray(labels, dtype=np.int64)))
        if not keep:
            return True
        selector = keep[0]
        for other in keep[1:]:
            selector = faiss.IDSelectorOr(selector, other)
            keep.append(selector)  # faiss holds raw pointers: keep every part alive until removal
        self.index.remove_ids(selector)
        if self.gpu:
            self._to_device()
        return True


def _inner(index: faiss.Index) -> faiss.Index:
    import faiss

    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index


class ArrayKernel:
    """Vectors and labels held as arrays, searched by torch (CUDA fallback) or numpy (the reference)."""

    def __init__(self, labels: np.ndarray, vectors: np.ndarray, backend: str = "numpy", device: str = "cpu") -> None:
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)
        self.vectors = _f32(vectors)
        self.backend, self.device = backend, device
        self.name = "numpy" if backend == "numpy" else f"torch-{device}"
        self._on_device: Any = None  # the torch copy of `vectors`, made on first search

    @property
    def ntotal(self) -> int:
        return len(self.labels)

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        self.labels = np.concatenate([self.labels, np.asarray(labels, dtype=np.int64)])
        self.vectors = np.concatenate([self.vectors, _f32(vectors)]) if len(self.vectors) else _f32(vectors)
        self._on_device = None

    def remove(self, labels: np.ndarray, ranges: Sequence[tuple[int, int]] = ()) -> bool:
        drop = np.isin(self.labels, labels)
        for lo, hi in ranges:
            drop |= (self.labels >= lo) & (self.labels < hi)
        self.labels, self.vectors = self.labels[~drop], self.vectors[~drop]
        self._on_device = None
        return True

    def search(self, queries: np.ndarray, k: int, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.ntotal)
        if k == 0 or not len(queries):
            return np.zeros((len(queries), k), np.float32), np.zeros((len(queries), k), np.int64)
        if self.backend == "numpy":
            scores = _f32(queries) @ self.vectors.T
            idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            return np.take_along_axis(scores, idx, axis=1), self.labels[idx]
        import torch

        if self._on_device is None:
            self._on_device = torch.from_numpy(self.vectors).to(self.device)
        x = self._on_device
        out_s, out_i = [], []
        with torch.no_grad():
            for s in range(0, len(queries), chunk):
                q = torch.from_numpy(_f32(queries[s : s + chunk])).to(self.device)
                v, i = torch.topk(q @ x.T, k, dim=1)
                out_s.append(v.cpu().numpy())
                out_i.append(i.cpu().numpy())
        return np.concatenate(out_s), self.labels[np.concatenate(out_i)]


def on_gpu(name: str, ann: str) -> bool:
    """Whether a faiss kernel runs on the GPU: asked for, or `auto` with a GPU for exact and IVF
    search (faiss has no GPU HNSW; GPU IVF-PQ needs settings per code size not checked here)."""
    return name == "faiss-gpu" or (name == "auto" and ann in ("flat", "ivf") and faiss_gpus() > 0)


def resolve_ann(kind: str, rows: int) -> str:
    """`auto` is exact (flat) for small galleries and IVF from FLAT_BELOW rows on."""
    if kind not in ANN_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose from {ANN_KINDS}")
    if kind == "auto":
        return "flat" if rows < FLAT_BELOW else "ivf"
    return kind


def pq_bytes(dim: int) -> int:
    """Sub-quantisers (one byte each) for a dim: the largest divisor of dim at most dim / 4."""
    return max(m for m in range(1, max(1, dim // 4) + 1) if dim % m == 0)


def pq_bits(n: int) -> int:
    """Bits per sub-quantiser code: 8 (256 centroids), fewer when there are too few rows to train them."""
    return int(max(1, min(8, np.floor(np.log2(max(2, n // 39))))))


def candidates_for(k: int, factor: int) -> int:
    """How many IVF-PQ candidates a top-k search re-ranks (`factor`: the kernel's calibrated depth)."""
    return max(factor * k, RERANK_MIN)


def rerank(queries: np.ndarray, candidates: np.ndarray, lookup: Lookup, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of the candidate labels by exact inner product with their stored vectors (-1 pads, as faiss)."""
    queries = _f32(queries)
    valid = candidates >= 0
    scores = np.full(candidates.shape, -np.finfo(np.float32).max, np.float32)
    if valid.any():
        vectors = lookup(candidates[valid])
        scores[valid] = np.einsum("nd,nd->n", vectors, queries[np.nonzero(valid)[0]])
    k = min(k, candidates.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(np.where(valid, candidates, -1), order, 1)


def ivf_lists(n: int) -> int:
    """sqrt(n) lists (at least 39 training points each): 1,000 at 1M rows, 3,162 at 10M."""
    return max(1, min(int(round(np.sqrt(n))), n // 39))


def sample_labelled(parts: Sequence[Part], n: int, rng: np.random.Generator) -> Part:
    """About n (label, vector) pairs drawn uniformly from all parts, without concatenating the parts
    (rows of a memory-mapped part are read only when drawn)."""
    total = sum(len(p[0]) for p in parts)
    labels, vectors = [], []
    for part_labels, part_vectors in parts:
        if not len(part_labels):
            continue
        size = len(part_labels) if total <= n else int(round(n * len(part_labels) / total))
        idx = np.sort(rng.choice(len(part_labels), size=size, replace=False))
        labels.append(part_labels[idx])
        vectors.append(np.asarray(part_vectors[idx]))
    if not labels:
        return np.zeros(0, np.int64), np.zeros((0, parts[0][1].shape[1] if parts else 1), np.float32)
    return np.concatenate(labels), _f32(np.concatenate(vectors))


def sample_parts(parts: Sequence[Part], n: int, rng: np.random.Generator) -> np.ndarray:
    """About n vectors drawn uniformly from all parts."""
    return sample_labelled(parts, n, rng)[1]


def smallest(holds: Callable[[int], bool], top: int) -> int:
    """The smallest n in [1, top] for which the monotone `holds(n)` is true (top when none is):
    doubling from 1, then bisection."""
    lo, hi = 0, 1
    while hi < top and not holds(hi):
        lo, hi = hi, min(top, hi * 2)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if holds(mid) else (mid, hi)
    return hi


def calibrate(
    index: faiss.IndexIVF,
    parts: Sequence[Part],
    lookup: Lookup | None = None,
    target: float = TARGET_RECALL,
    probes: int = 256,
) -> tuple[int, int]:
    """The smallest nprobe, and for IVF-PQ (`lookup` given) the smallest re-rank depth, whose
    recall@10 reaches `target` for stored rows used as queries: (nprobe, rerank factor; 0 for IVF).

    Each probe row's own label is left out of both rankings, so the check is about its
    neighbours, as for a new query from the same distribution. Exact top-11 streams over the
    parts (O(probes x rows)). nprobe is chosen with the deepest re-rank, then the depth at that nprobe.
    """
    import faiss

    labels, queries = sample_labelled(parts, probes, np.random.default_rng(1))
    k = 11
    best_s = np.full((len(queries), k), -np.inf, np.float32)
    best_l = np.full((len(queries), k), -1, np.int64)
    for part_labels, vectors in parts:
        flat = faiss.IndexFlatIP(queries.shape[1])
        flat.add(_f32(vectors))
        sc, ix = flat.search(queries, min(k, len(part_labels)))
        all_s, all_l = np.hstack([best_s, sc]), np.hstack([best_l, part_labels[ix]])
        top = np.argsort(-all_s, axis=1)[:, :k]
        best_s, best_l = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_l, top, 1)
    truth = [set(row[row != own][:10].tolist()) for row, own in zip(best_l, labels)]

    def reaches(nprobe: int, factor: int) -> bool:
        index.nprobe = nprobe
        if lookup is None:
            found = index.search(queries, k)[1]
        else:
            found = rerank(queries, index.search(queries, candidates_for(k, factor))[1], lookup, k)[1]
        got = np.mean([len(set(row[row != own][:10].tolist()) & t) / max(1, len(t)) for row, own, t in zip(found, labels, truth)])
        return bool(got >= target)

    nprobe = smallest(lambda p: reaches(p, RERANK_MAX), index.nlist)
    factor = smallest(lambda f: reaches(nprobe, f), RERANK_MAX) if lookup is not None else 0
    index.nprobe = nprobe
    return nprobe, factor


def build_kernel(name: str, ann: str, dim: int, parts: Iterable[Part], lookup: Lookup | None = None) -> Kernel:
    """A kernel over labelled parts, added part by part (one copy of the vectors in memory).

    ann = ivf trains k-means on a sample first (40 points per list, 10 iterations) and
    calibrates nprobe on stored rows (calibrate); ivfpq also trains product-quantiser
    codes (pq_bytes, pq_bits) and calibrates the re-rank depth too, for which it needs
    `lookup` (the caller's stored vectors by label); hnsw uses
    32 links, efSearch 128. `auto` is faiss on a GPU when faiss sees one, else torch CUDA,
    else faiss CPU; approximate indexes are always faiss.
    """
    import faiss

    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; choose from {KERNELS}")
    parts = list(parts)
    if name in ("torch", "numpy") or (name == "auto" and ann == "flat" and faiss_gpus() == 0 and torch_cuda()):
        labels = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        vectors = np.concatenate([p[1] for p in parts]) if parts else np.zeros((0, dim), np.float32)
        backend = "numpy" if name == "numpy" else "torch"
        device = "cuda" if name == "auto" or (backend == "torch" and torch_cuda()) else "cpu"
        return ArrayKernel(labels, vectors, backend, device)
    gpu = on_gpu(name, ann)
    n = sum(len(p[0]) for p in parts)
    trained_on = 0
    if ann == "ivfpq" and lookup is None:
        raise ValueError("an ivfpq kernel needs a lookup of stored vectors for its re-rank")
    index: faiss.Index
    ivf: faiss.IndexIVF  # the same object as index, for IVF kinds
    if ann in IVF_KINDS and n:
        nlist = ivf_lists(n)
        if ann == "ivf":
            ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            sample = 40 * nlist
        else:
            ivfpq = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, pq_bytes(dim), pq_bits(n), faiss.METRIC_INNER_PRODUCT)
            ivf, sample = ivfpq, max(40 * nlist, 64 << ivfpq.pq.nbits)  # 64 points per PQ centroid
        ivf.cp.niter = 10
        ivf.train(sample_parts(parts, sample, np.random.default_rng(0)))
        index = ivf
        trained_on = n
    elif ann == "hnsw":
        hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction, hnsw.hnsw.efSearch = 80, 128
        index = faiss.IndexIDMap2(hnsw)
    else:
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    kernel = FaissKernel(index, False, trained_on)
    for labels, vectors in parts:
        kernel.add(labels, vectors)
    if ann in IVF_KINDS and n:
        ivf.nprobe, kernel.rerank = calibrate(ivf, parts, lookup if ann == "ivfpq" else None)
    return FaissKernel(index, gpu, trained_on, kernel.rerank) if gpu else kernel


def make_kernel(name: str, vectors: np.ndarray, ann: str = "flat") -> Kernel:
    """A kernel over plain vectors whose labels are their row positions (an ivfpq kernel's
    candidates are re-ranked by the caller: `rerank(q, labels, lambda l: vectors[l], k)`)."""
    vectors = _f32(vectors)
    return build_kernel(name, ann, vectors.shape[1], [(np.arange(len(vectors), dtype=np.int64), vectors)], lambda labels: vectors[labels])


def backend_name(name: str) -> str:
    """What a kernel name resolves to on this machine, without building anything."""
    if name == "auto":
        if faiss_gpus() > 0:
            return "faiss-gpu"
        return "torch-cuda" if torch_cuda() else "faiss-cpu"
    return {"faiss": "faiss-cpu"}.get(name, name)
