"""Retrieval scores and compatibility-matrix metrics (ECC, AC, AM) for model upgrades, in numpy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from compatret.core.transforms import normalize

_CHUNK = 1024


def retrieval_scores(
    query_feats: np.ndarray,
    gallery_feats: np.ndarray,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    leave_one_out: bool,
) -> dict[str, float]:
    """Return ``{"top1", "map"}`` in percent for cosine-similarity retrieval.

    A gallery item is relevant when it shares the query's label. Both scores are
    averaged over the queries that have at least one relevant item (a lone query
    can neither hit nor miss; pytorch-metric-learning drops them too): ``top1``
    is the share whose nearest gallery item is relevant, ``map`` the mean average
    precision over the full ranking. With ``leave_one_out`` (query set == gallery set) query i
    never retrieves gallery item i. Query and gallery may come from different
    models (old gallery, new queries): that is the compatibility test. Works in
    query chunks so 5k x 5k takes about a second.
    """
    q, g = normalize(query_feats), normalize(gallery_feats)
    ql, gl = np.asarray(query_labels), np.asarray(gallery_labels)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"feature dims differ: {q.shape[1]} vs {g.shape[1]}")
    if leave_one_out and len(q) != len(g):
        raise ValueError("leave_one_out needs as many queries as gallery items")
    hits, aps = [], []
    for start in range(0, len(q), _CHUNK):
        sims = q[start : start + _CHUNK] @ g.T
        relevant = ql[start : start + _CHUNK, None] == gl[None, :]
        if leave_one_out:
            rows = np.arange(len(sims))
            sims[rows, rows + start] = -np.inf
            relevant[rows, rows + start] = False
        order = np.argsort(-sims, axis=1, kind="stable")
        ranked = np.take_along_axis(relevant, order, axis=1)
        n_rel = ranked.sum(axis=1)
        hits.append(ranked[n_rel > 0, 0])
        precision = np.cumsum(ranked, axis=1) / np.arange(1, ranked.shape[1] + 1)
        ap = (precision * ranked).sum(axis=1) / np.maximum(n_rel, 1)
        aps.append(ap[n_rel > 0])
    all_hits, all_aps = np.concatenate(hits), np.concatenate(aps)
    if not len(all_aps):
        return {"top1": 0.0, "map": 0.0}
    return {"top1": 100.0 * float(all_hits.mean()), "map": 100.0 * float(all_aps.mean())}


def _check_square(matrix: np.ndarray) -> np.ndarray:
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"compatibility matrix must be square, got shape {m.shape}")
    return m


def empirical_compatibility_criterion(matrix: np.ndarray) -> np.ndarray:
    """Return a ``[T, T]`` bool array, True at ``(i, j)``, ``i > j``, iff ``M[i][j] > M[j][j]``.

    ``M[i][j]`` is the score of queries from model i against a gallery from model
    j. The pair is compatible when upgrading the queries to model i beats staying
    with model j on both sides. Diagonal and upper triangle are False.
    """
    m = _check_square(matrix)
    return np.tril(m > np.diag(m)[None, :], k=-1)


ecc = empirical_compatibility_criterion


def average_compatibility(matrix: np.ndarray) -> float:
    """AC = (number of pairs i > j with M[i][j] > M[j][j]) / (T(T-1)/2).

    As in iamcl2r, a single model (T = 1) counts as fully compatible (AC = 1).
    """
    m = _check_square(matrix)
    pairs = max(m.shape[0] * (m.shape[0] - 1) / 2, 1.0)
    failures = np.tril(m <= np.diag(m)[None, :], k=-1).sum()
    return float(pairs - failures) / pairs


def average_multimodel_accuracy(matrix: np.ndarray) -> float:
    """AM = mean of M[i][j] over the lower triangle including the diagonal (j <= i).

    Same as iamcl2r's last-step average accuracy, in the matrix's own units
    (it does not rescale fractions to percent).
    """
    m = _check_square(matrix)
    return float(m[np.tril_indices(m.shape[0])].mean())


def plot_compat_matrix(matrix: np.ndarray, labels: Sequence[str], path: str | Path, title: str) -> Path:
    """Save the lower-triangular matrix as an annotated heatmap PNG and return its path.

    Rows are query models, columns gallery models; the upper triangle (pairs that
    never occur: an old model cannot query a newer gallery) is left blank.
    """
    m = _check_square(matrix)
    if len(labels) != m.shape[0]:
        raise ValueError(f"{len(labels)} labels for a {m.shape[0]}x{m.shape[0]} matrix")
    shown = np.ma.masked_array(m, mask=np.triu(np.ones_like(m, dtype=bool), k=1))
    size = 1.0 + 0.9 * m.shape[0]
    fig = Figure(figsize=(size + 1.5, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(shown, cmap="viridis")
    fig.colorbar(image, ax=ax)
    for i, j in zip(*np.tril_indices(m.shape[0])):
        ax.text(int(j), int(i), f"{m[i, j]:.1f}", ha="center", va="center", color="w", fontsize=9)
    ax.set_xticks(range(len(labels)), labels=list(labels), rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels=list(labels))
    ax.set_xlabel("gallery model")
    ax.set_ylabel("query model")
    ax.set_title(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    return out
