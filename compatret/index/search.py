"""Exact inner-product search kernels (faiss CPU/GPU, torch, numpy) behind one small interface."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Kernel(Protocol):
    """Exact top-k inner product over a fixed matrix of vectors (positions are row numbers)."""

    name: str

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


def faiss_gpus() -> int:
    import faiss

    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


def torch_cuda() -> bool:
    """CUDA through torch, without importing torch on machines that have no NVIDIA driver."""
    import os

    if not os.path.exists("/proc/driver/nvidia"):
        return False
    import torch

    return bool(torch.cuda.is_available())


class FaissKernel:
    """faiss IndexFlatIP; moved to the GPU when faiss sees one."""

    def __init__(self, index: "faiss.Index", use_gpu: bool | None = None) -> None:  # noqa: F821
        import faiss

        self.cpu_index = index
        use_gpu = faiss_gpus() > 0 if use_gpu is None else use_gpu
        self.index = faiss.index_cpu_to_all_gpus(index) if use_gpu else index
        self.name = "faiss-gpu" if use_gpu else "faiss-cpu"

    @staticmethod
    def from_vectors(vectors: np.ndarray, use_gpu: bool | None = None) -> FaissKernel:
        import faiss

        index = faiss.IndexFlatIP(vectors.shape[1])
        if len(vectors):
            index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        return FaissKernel(index, use_gpu)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.index.ntotal)
        if k == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)


class TorchKernel:
    """Matrix product + topk in torch: the fallback on CUDA machines without faiss-gpu."""

    def __init__(self, vectors: np.ndarray, device: str | None = None) -> None:
        import torch

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.vectors = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(self.device)
        self.name = f"torch-{self.device}"

    def search(self, queries: np.ndarray, k: int, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        import torch

        k = min(k, self.vectors.shape[0])
        scores, idx = [], []
        with torch.no_grad():
            for s in range(0, len(queries), chunk):
                q = torch.from_numpy(np.ascontiguousarray(queries[s : s + chunk], dtype=np.float32)).to(self.device)
                v, i = torch.topk(q @ self.vectors.T, k, dim=1)
                scores.append(v.cpu().numpy())
                idx.append(i.cpu().numpy())
        if not scores:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return np.concatenate(scores), np.concatenate(idx).astype(np.int64)


class NumpyKernel:
    """The plain reference: full scores then a stable sort. Used to check the others."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = np.asarray(vectors, dtype=np.float32)
        self.name = "numpy"

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self.vectors))
        scores = queries.astype(np.float32) @ self.vectors.T
        idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, idx, axis=1), idx.astype(np.int64)


KERNELS = ("auto", "faiss", "faiss-gpu", "torch", "numpy")
ANN_KINDS = ("auto", "flat", "ivf", "hnsw")
FLAT_BELOW = 200_000  # rows: exact search is fast enough below this, and loses nothing


def resolve_ann(kind: str, rows: int) -> str:
    """`auto` is exact (flat) for small galleries and IVF from FLAT_BELOW rows on."""
    if kind not in ANN_KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose from {ANN_KINDS}")
    if kind == "auto":
        return "flat" if rows < FLAT_BELOW else "ivf"
    return kind


def ann_index(kind: str, vectors: np.ndarray) -> "faiss.Index":  # noqa: F821
    """An approximate inner-product index over `vectors`: IVF (k-means lists) or HNSW (graph).

    IVF: sqrt-rule list count (4 * sqrt(n)), trained on at most 64 lists' worth of samples
    per list, nprobe = lists / 128 (at least 32). HNSW: 32 links, efSearch 128.
    """
    import faiss

    n, d = vectors.shape
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.add(vectors)
        index.hnsw.efSearch = 128
        return index
    nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = vectors if n <= 64 * nlist else vectors[np.random.default_rng(0).choice(n, 64 * nlist, replace=False)]
    index.train(sample)
    index.add(vectors)
    index.nprobe = min(nlist, max(32, nlist // 128))
    return index


def backend_name(name: str) -> str:
    """What a kernel name resolves to on this machine, without building anything."""
    if name == "auto":
        if faiss_gpus() > 0:
            return "faiss-gpu"
        return "torch-cuda" if torch_cuda() else "faiss-cpu"
    return {"faiss": "faiss-cpu"}.get(name, name)


def make_kernel(name: str, vectors: np.ndarray, ann: str = "flat") -> Kernel:
    """Build a kernel by name; `auto` is faiss GPU, else torch CUDA, else faiss CPU.

    ann = ivf or hnsw builds an approximate faiss index instead (on the GPU when faiss sees one).
    """
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if ann in ("ivf", "hnsw") and len(vectors):
        on_gpu = name in ("auto", "faiss-gpu") and ann == "ivf" and faiss_gpus() > 0  # faiss has no GPU HNSW
        return FaissKernel(ann_index(ann, vectors), use_gpu=on_gpu)
    if name == "auto":
        if faiss_gpus() > 0:
            return FaissKernel.from_vectors(vectors, use_gpu=True)
        if torch_cuda():
            return TorchKernel(vectors, "cuda")
        return FaissKernel.from_vectors(vectors, use_gpu=False)
    if name == "faiss":
        return FaissKernel.from_vectors(vectors, use_gpu=False)
    if name == "faiss-gpu":
        return FaissKernel.from_vectors(vectors, use_gpu=True)
    if name == "torch":
        return TorchKernel(vectors)
    if name == "numpy":
        return NumpyKernel(vectors)
    raise ValueError(f"unknown kernel {name!r}; choose from {KERNELS}")
