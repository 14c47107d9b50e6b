"""Maps between two models' spaces, fitted on pairs of vectors of the same documents.

Three kinds, simplest first (FCT and Drift-Adapter fit the same family):
- procrustes: an orthogonal (or, across dims, semi-orthogonal) map: keeps angles, cannot overfit;
- affine: ridge regression with a bias, the ridge strength chosen on the held-aside pairs;
- mlp: affine plus a residual ReLU layer, trained in torch with an in-batch contrastive loss.

Every map is a `LearnedMap` (the contract's transform step, read with numpy only), so a gallery
applies it without torch. Kinds are compared on held-aside pairs by how well each document's
target vector retrieves its own mapped vector (mean reciprocal rank), never on test queries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from compatret.versions import LearnedMap, normalize

KINDS = ("procrustes", "affine", "mlp")
RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0)


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


def pair_mrr(mapped: np.ndarray, target: np.ndarray) -> float:
    """Mean reciprocal rank of each document's mapped vector when its target vector is the query
    among all held-aside mapped vectors: how well the map keeps documents apart, not just close."""
    scores = normalize(target) @ normalize(mapped).T
    own = np.diag(scores)
    ranks = (scores > own[:, None]).sum(axis=1) + 1
    return float(np.mean(1.0 / ranks))


@dataclass(frozen=True)
class Candidate:
    kind: str
    fitted: LearnedMap
    held_out_mrr: float
    held_out_cosine: float
    fit_seconds: float


def fit_kinds(x_train: np.ndarray, y_train: np.ndarray, x_held: np.ndarray, y_held: np.ndarray,
              kinds: tuple[str, ...] = KINDS, progress: Callable[[str], None] | None = None) -> list[Candidate]:
    """Fit each kind on the training pairs and score it on the held-aside pairs."""
    out: list[Candidate] = []
    best_affine: LearnedMap | None = None
    for kind in kinds:
        t0 = time.perf_counter()
        if kind == "procrustes":
            fitted = fit_procrustes(x_train, y_train)
        elif kind in ("affine", "mlp"):
            if best_affine is None:
                fits = [fit_affine(x_train, y_train, r) for r in RIDGE_GRID]
                best_affine = max(fits, key=lambda f: pair_mrr(f(x_held), y_held))
            fitted = best_affine if kind == "affine" else fit_mlp(x_train, y_train, best_affine)
        else:
            raise ValueError(f"unknown adapter kind {kind!r}; choose from {KINDS}")
        seconds = time.perf_counter() - t0
        mapped = fitted(x_held)
        cosine = float(np.mean(np.sum(normalize(mapped) * normalize(y_held), axis=1)))
        out.append(Candidate(kind, fitted, pair_mrr(mapped, y_held), cosine, seconds))
        if progress is not None:
            progress(f"{kind}: held-aside pair MRR {out[-1].held_out_mrr:.3f}, cosine {cosine:.3f} ({seconds:.1f} s)")
    return out
