"""Maps between two models' spaces, fitted on pairs of vectors of the same documents.

Three kinds, simplest first (FCT and Drift-Adapter fit the same family):
- procrustes: an orthogonal (or, across dims, semi-orthogonal) map: keeps angles, cannot overfit;
- affine: ridge regression with a bias, the ridge strength (never 0) chosen on the held-aside pairs;
- mlp: affine plus a residual ReLU layer, trained in torch with an in-batch contrastive loss.

Every map is a `LearnedMap` (the contract's transform step, read with numpy only), so a gallery
applies it without torch. Kinds are compared on held-aside documents by how faithfully the map
reproduces the target model's ranking (`neighbour_recall`), never on test queries; the chosen
kind is then fitted again on every pair.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from compatret.versions import LearnedMap, normalize

KINDS = ("procrustes", "affine", "mlp")
# relative to the rows. Never 0: embeddings are often rank-deficient (all-MiniLM-L6-v2's vectors
# plus a bias column have two singular values near 1e-16), and plain least squares then returns
# weights of 1e31 that cancel on the fitted rows and blow up on anything else
RIDGE_GRID = (1e-5, 1e-4, 1e-3)


def fit_procrustes(x: np.ndarray, y: np.ndarray) -> LearnedMap:
    """The (semi-)orthogonal W minimising |x W - y| (SVD of x^T y), no bias."""
    u, _, vt = np.linalg.svd(x.T @ y, full_matrices=False)
    return LearnedMap((u @ vt).astype(np.float32), np.zeros(y.shape[1], np.float32))


def fit_affine(x: np.ndarray, y: np.ndarray, ridge: float) -> LearnedMap:
    """Ridge regression of y on [x, 1] (the bias is not shrunk); `ridge` scales with the rows."""
    xb = np.hstack([x, np.ones((len(x), 1), np.float32)]).astype(np.float64)
    reg = ridge * len(x) * np.eye(xb.shape[1])
    reg[-1, -1] = 0.0
    sol = np.linalg.solve(xb.T @ xb + reg, xb.T @ y.astype(np.float64))
    return LearnedMap(sol[:-1].astype(np.float32), sol[-1].astype(np.float32))


def fit_mlp(x: np.ndarray, y: np.ndarray, start: LearnedMap, hidden: int = 512, epochs: int = 30, seed: int = 0) -> LearnedMap:
    """`start` (an affine map) plus a residual ReLU layer, trained with an in-batch InfoNCE loss
    (each mapped vector must be closest to its own target) and a cosine term; AdamW, batch 256."""
    import torch

    torch.manual_seed(seed)
    xs, ys = torch.from_numpy(x.astype(np.float32)), torch.from_numpy(normalize(y))
    weight = torch.nn.Parameter(torch.from_numpy(start.weight.copy()))
    bias = torch.nn.Parameter(torch.from_numpy(start.bias.copy()))
    up = torch.nn.Linear(x.shape[1], hidden)
    down = torch.nn.Linear(hidden, y.shape[1], bias=False)
    torch.nn.init.zeros_(down.weight)  # starts as the affine map
    params = [weight, bias, *up.parameters(), *down.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(xs), generator=gen).split(256):
            out = torch.nn.functional.normalize(xs[idx] @ weight + bias + down(torch.relu(up(xs[idx]))), dim=1)
            logits = out @ ys[idx].T / 0.05
            loss = torch.nn.functional.cross_entropy(logits, torch.arange(len(idx))) + (1 - (out * ys[idx]).sum(1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return LearnedMap(weight.numpy().copy(), bias.numpy().copy(), up.weight.T.numpy().copy(),
                          up.bias.numpy().copy(), down.weight.T.numpy().copy())


def neighbour_recall(query_pred: np.ndarray, query_true: np.ndarray, cand_pred: np.ndarray, cand_true: np.ndarray, k: int = 10) -> float:
    """Overlap@k of two rankings of the same candidates: as the map serves them (`*_pred`) and as
    the target model ranks them itself (`*_true`). Held-aside documents play the queries: what
    matters is that the served ranking matches the target's, not only that pairs sit close."""
    pred = np.argsort(-(normalize(query_pred) @ normalize(cand_pred).T), axis=1)[:, :k]
    true = np.argsort(-(normalize(query_true) @ normalize(cand_true).T), axis=1)[:, :k]
    return float(np.mean([len(set(p) & set(t)) / k for p, t in zip(pred, true)]))


@dataclass(frozen=True)
class Candidate:
    kind: str
    fitted: LearnedMap  # fitted on every pair (after the choice was made on the held-aside ones)
    held_out_recall: float  # neighbour_recall of the map fitted without the held-aside pairs
    held_out_cosine: float
    fit_seconds: float


def fit_one(kind: str, x: np.ndarray, y: np.ndarray, ridge: float = RIDGE_GRID[0]) -> LearnedMap:
    if kind == "procrustes":
        return fit_procrustes(x, y)
    if kind == "affine":
        return fit_affine(x, y, ridge)
    if kind == "mlp":
        return fit_mlp(x, y, fit_affine(x, y, ridge))
    raise ValueError(f"unknown adapter kind {kind!r}; choose from {KINDS}")


def fit_kinds(x: np.ndarray, y: np.ndarray, held: np.ndarray, gallery_side: bool, kinds: tuple[str, ...] = KINDS,
              progress: Callable[[str], None] | None = None) -> list[Candidate]:
    """Each kind fitted on the pairs not `held`, scored on the held ones (the ridge strength too),
    then fitted again on all pairs. `gallery_side`: x are stored vectors mapped into y's space
    (the held documents query the mapped rest); else x are query-side vectors mapped into the
    stored space (the mapped held documents query the stored rest)."""
    fit = ~held

    def score(m: LearnedMap) -> float:
        if gallery_side:
            return neighbour_recall(y[held], y[held], m(x[fit]), y[fit])
        return neighbour_recall(m(x[held]), y[held], y[fit], y[fit])

    ridge = max(RIDGE_GRID, key=lambda r: score(fit_affine(x[fit], y[fit], r))) if {"affine", "mlp"} & set(kinds) else RIDGE_GRID[0]
    out: list[Candidate] = []
    for kind in kinds:
        t0 = time.perf_counter()
        trial = fit_one(kind, x[fit], y[fit], ridge)
        recall = score(trial)
        cosine = float(np.mean(np.sum(normalize(trial(x[held])) * normalize(y[held]), axis=1)))
        final = fit_one(kind, x, y, ridge)
        out.append(Candidate(kind, final, recall, cosine, time.perf_counter() - t0))
        if progress is not None:
            progress(f"{kind}: held-aside neighbour recall@10 {recall:.3f}, cosine {cosine:.3f} ({out[-1].fit_seconds:.1f} s)")
    return out
