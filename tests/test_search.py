from __future__ import annotations

import numpy as np
import pytest

from compatret.search.kernels import backend_name, make_kernel
from compatret.core.transforms import normalize


def agree(ref: tuple[np.ndarray, np.ndarray], got: tuple[np.ndarray, np.ndarray], atol: float = 1e-4) -> None:
    """Scores equal; ids equal except where neighbours tie within atol."""
    np.testing.assert_allclose(got[0], ref[0], atol=atol)
    for i in range(len(ref[1])):
        for j in range(ref[1].shape[1]):
            if got[1][i, j] != ref[1][i, j]:
                assert abs(got[0][i, j] - ref[0][i, j]) <= atol


@pytest.mark.parametrize("n,d", [(1000, 32), (5000, 384)])
def test_kernels_agree_with_numpy(n, d):
    rng = np.random.default_rng(n)
    x = normalize(rng.normal(size=(n, d)))
    q = normalize(rng.normal(size=(50, d)))
    ref = make_kernel("numpy", x).search(q, 10)
    agree(ref, make_kernel("faiss", x).search(q, 10))
    agree(ref, make_kernel("torch", x).search(q, 10))


def test_ties_are_tolerated_but_scores_match():
    x = normalize(np.array([[1, 0], [1, 0], [0, 1], [1, 1]], dtype=np.float32))
    q = normalize(np.array([[1, 0]], dtype=np.float32))
    ref = make_kernel("numpy", x).search(q, 2)
    got = make_kernel("faiss", x).search(q, 2)
    assert set(got[1][0]) == {0, 1}
    agree(ref, got)


def test_k_larger_than_gallery_and_empty():
    x = normalize(np.eye(3, dtype=np.float32))
    s, i = make_kernel("faiss", x).search(x, 10)
    assert s.shape == (3, 3) and (i[:, 0] == np.arange(3)).all()
    s, i = make_kernel("faiss", np.zeros((0, 3), np.float32)).search(x, 5)
    assert s.shape == (3, 0)


def test_auto_kernel_follows_the_hardware():
    from compatret.core.device import torch_cuda
    from compatret.search.kernels import faiss_gpus

    expected = "faiss-gpu" if faiss_gpus() else "torch-cuda" if torch_cuda() else "faiss-cpu"
    assert backend_name("auto") == expected
    if not faiss_gpus() and not torch_cuda():  # this CI machine: no GPU, so the CPU kernel
        assert backend_name("auto") == "faiss-cpu"
    with pytest.raises(ValueError):
        make_kernel("bogus", np.eye(2, dtype=np.float32))


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kernels_recall_against_exact(kind):
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(50, 32))
    x = normalize(centers[rng.integers(0, 50, 8000)] + 0.4 * rng.normal(size=(8000, 32)))
    q = normalize(centers[rng.integers(0, 50, 100)] + 0.4 * rng.normal(size=(100, 32)))
    _, exact = make_kernel("faiss", x).search(q, 10)
    _, approx = make_kernel("faiss", x, ann=kind).search(q, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.9


def test_ivfpq_candidates_are_rescored_on_the_stored_vectors():
    """The codes only choose candidates: returned scores are exact inner products, and recall
    after the re-rank is that of IVF (without it, quantised scores reorder near neighbours)."""
    from compatret.search.kernels import candidates_for, rerank

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(50, 64))
    x = normalize(centers[rng.integers(0, 50, 8000)] + 0.4 * rng.normal(size=(8000, 64)))
    q = normalize(centers[rng.integers(0, 50, 100)] + 0.4 * rng.normal(size=(100, 64)))
    _, exact = make_kernel("faiss", x).search(q, 10)
    kernel = make_kernel("faiss", x, ann="ivfpq")
    assert kernel.index.pq.M == 16  # type: ignore[attr-defined]  # a sub-quantiser per 4 dims
    coarse_scores, candidates = kernel.search(q, candidates_for(10, kernel.rerank))  # type: ignore[attr-defined]
    scores, found = rerank(q, candidates, lambda labels: x[labels], 10)
    np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", x[found], q), atol=1e-5)
    assert np.abs(coarse_scores[:, :10] - np.einsum("qkd,qd->qk", x[candidates[:, :10]], q)).max() > 1e-3
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(found, exact)])
    raw = np.mean([len(set(a[:10]) & set(e)) / 10 for a, e in zip(candidates, exact)])
    assert recall >= 0.95 and recall > raw


def test_rerank_pads_missing_candidates_as_faiss_does():
    from compatret.search.kernels import rerank

    x = normalize(np.eye(3, dtype=np.float32))
    scores, labels = rerank(x[:1], np.array([[2, -1, 0]]), lambda labels: x[labels], 3)
    assert labels.tolist() == [[0, 2, -1]] and scores[0, 0] == pytest.approx(1.0)


def test_ann_choice_by_size():
    from compatret.search.kernels import resolve_ann

    assert resolve_ann("auto", 10_000) == "flat" and resolve_ann("auto", 5_000_000) == "ivf"
    assert resolve_ann("hnsw", 10) == "hnsw"
    with pytest.raises(ValueError):
        resolve_ann("lsh", 10)
