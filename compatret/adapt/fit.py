"""Maps between two models' spaces, fitted on pairs of vectors of the same documents.

Three kinds, simplest first (FCT and Drift-Adapter fit the same family):
- procrustes: an orthogonal (or, across dims, semi-orthogonal) map: keeps angles, cannot overfit;
- affine: ridge regression with a bias, the ridge strength (never 0) one of RIDGE_GRID;
- mlp: affine plus a residual ReLU layer, trained in torch with an in-batch contrastive loss.

Every map is a `LearnedMap` (the contract's transform step, read with numpy only), so a gallery
applies it without torch. Which kind and strength serve best is decided out of sample, in
`compatret.adapt.select`; the chosen one is then fitted again on every pair.
"""

from __future__ import annotations

import numpy as np

from compatret.core.transforms import LearnedMap, normalize

KINDS = ("procrustes", "affine", "mlp")
# relative to the rows. Never 0: embeddings are often rank-deficient (all-MiniLM-L6-v2's vectors
# plus a bias column have two singular values near 1e-16), and plain least squares then returns
# weights of 1e31 that cancel on the fitted rows and blow up on anything else
RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1)


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
        return LearnedMap(
            weight.numpy().copy(), bias.numpy().copy(), up.weight.T.numpy().copy(), up.bias.numpy().copy(), down.weight.T.numpy().copy()
        )


def fit_one(kind: str, x: np.ndarray, y: np.ndarray, ridge: float = RIDGE_GRID[0], epochs: int = 30) -> LearnedMap:
    """One map of `kind` from x's space to y's."""
    if kind == "procrustes":
        return fit_procrustes(x, y)
    if kind == "affine":
        return fit_affine(x, y, ridge)
    if kind == "mlp":
        return fit_mlp(x, y, fit_affine(x, y, ridge), epochs=epochs)
    raise ValueError(f"unknown adapter kind {kind!r}; choose from {KINDS}")
