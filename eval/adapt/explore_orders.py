"""Exploration (validation split only): which backfill order closes the gap fastest?

    python eval/adapt/explore_orders.py     # needs runs/adapt/gallery-minilm-{l3,l6} from eval/adapt/run.py

Simulates an L3 gallery mapped into L6's space by an MLP adapter (3,000 pairs) and backfilled
to native L6 vectors in several orders, scored on SciFact *train* queries (never test):
random, crowding of the old vectors (what `--order uncertainty` uses), adapter disagreement,
a ridge predictor of the mapping error trained on cross-fitted errors, the true error (an
oracle), and the rows a log of other train queries retrieves first (two halves, crossed).
Prints nDCG@10 at 0/10/20/30/50 % of rows. Not a benchmark with a bar: the README quotes it
to say why the 50 %-of-gap-at-30 % bar was not reached.
"""
import time

import numpy as np
from compatret.core.config import dataset
from compatret.data.beir import load_beir
from compatret.evaluation.retrieval import score_run
from compatret.store.gallery import Gallery
from compatret.encoders import load_encoder
from compatret.adapt.fit import fit_one
from compatret.core.transforms import normalize
data = load_beir(dataset("scifact"), splits=("train",))
qrels = data.split("train"); qids = list(qrels)
G = {m: Gallery.open(f"runs/adapt/gallery-{m}").vectors_by_id() for m in ("minilm-l3", "minilm-l6")}
dids = sorted(G["minilm-l3"])
V = {m: normalize(np.stack([G[m][d][1] for d in dids])) for m in G}
Qn = load_encoder("minilm-l6").encode_queries([data.queries[q] for q in qids])
X, Y = V["minilm-l3"], V["minilm-l6"]
n = len(dids)
idx = np.sort(np.random.default_rng(0).choice(n, 3000, replace=False))
full = fit_one("mlp", X[idx], Y[idx])
aff = fit_one("affine", X[idx], Y[idx])
M = normalize(full(X))
def ndcg(D):
    s = normalize(Qn) @ D.T
    top = np.argsort(-s, 1)[:, :100]
    return score_run(qrels, {qq: {dids[j]: float(s[i, j]) for j in top[i]} for i, qq in enumerate(qids)})["ndcg_at_10"]
# honest per-row errors on the sample by 5-fold cross-fitting
folds = np.arange(3000) % 5
np.random.default_rng(2).shuffle(folds)
err = np.zeros(3000)
t0=time.time()
for f in range(5):
    m = fit_one("mlp", X[idx][folds != f], Y[idx][folds != f])
    err[folds == f] = 1 - np.sum(normalize(m(X[idx][folds == f])) * Y[idx][folds == f], 1)
print("cv", time.time()-t0)
from sklearn.linear_model import Ridge
feats = lambda x: np.hstack([x, normalize(full(x))])
pred_err = {}
for a in (1.0, 10.0):
    r = Ridge(alpha=a).fit(feats(X[idx]), err)
    pred_err[a] = r.predict(feats(X))
true_err = 1 - np.sum(M * Y, 1)
rest = np.setdiff1d(np.arange(n), idx)
for a, p in pred_err.items():
    print("ridge", a, "corr on unseen rows", np.corrcoef(p[rest], true_err[rest])[0, 1])
# crowding in old space
lm = X[np.random.default_rng(0).choice(n, 2048, replace=False)]
s = X @ lm.T; s.sort(1); crowd = s[:, -11:-1].mean(1)
disagree = 1 - np.sum(M * normalize(aff(X)), 1)
print("corr crowd", np.corrcoef(crowd, true_err)[0,1], "disagree", np.corrcoef(disagree, true_err)[0,1])
orders = {"random": np.random.default_rng(5).permutation(n), "crowd": np.argsort(-crowd), "disagree": np.argsort(-disagree),
          "pred1": np.argsort(-pred_err[1.0]), "pred10": np.argsort(-pred_err[10.0]), "oracle_err": np.argsort(-true_err)}
for name, o in orders.items():
    pts = []
    for f in (0.0, 0.1, 0.2, 0.3, 0.5):
        D = M.copy(); k = int(f * n); D[o[:k]] = Y[o[:k]]
        pts.append(round(ndcg(D), 4))
    print(name, pts, flush=True)
print("native", ndcg(Y))
def ndcg_b(D, mapped, b):
    s = normalize(Qn) @ D.T
    s[:, mapped] += b
    top = np.argsort(-s, 1)[:, :100]
    return score_run(qrels, {qq: {dids[j]: float(s[i, j]) for j in top[i]} for i, qq in enumerate(qids)})["ndcg_at_10"]
for name in ("random", "crowd", "pred1"):
    o = orders[name]
    for f in (0.1, 0.3, 0.5):
        k = int(f * n); D = M.copy(); D[o[:k]] = Y[o[:k]]
        mapped = np.ones(n, bool); mapped[o[:k]] = False
        print(name, f, [(b, round(ndcg_b(D, mapped, b), 4)) for b in (-0.04, -0.02, 0, 0.02, 0.04, 0.06)], flush=True)
# a query-free estimate: docs as queries, native top-10 scores vs mapped
sN = Y[:500] @ Y.T; sM = Y[:500] @ M.T
for s in (sN, sM): s[np.arange(500), np.arange(500)] = -1
print("est bias top10", np.sort(sN,1)[:, -10:].mean() - np.sort(sM,1)[:, -10:].mean())
Qs = normalize(Qn)
print("query top10 native vs mapped", np.sort(Qs@Y.T,1)[:, -10:].mean(), np.sort(Qs@M.T,1)[:, -10:].mean())
half = np.random.default_rng(7).random(len(qids)) < 0.5
qa, qb = np.flatnonzero(half), np.flatnonzero(~half)
def ndcg_sub(D, rows):
    s = Qs[rows] @ D.T
    top = np.argsort(-s, 1)[:, :100]
    sub = {qids[i]: qrels[qids[i]] for i in rows}
    return score_run(sub, {qids[i]: {dids[j]: float(s[r, j]) for j in top[r]} for r, i in enumerate(rows)})["ndcg_at_10"]
for depth in (10, 30, 100):
    for log_rows, ev_rows in ((qa, qb), (qb, qa)):
        s = Qs[log_rows] @ M.T
        top = np.argsort(-s, 1)[:, :depth]
        # weight by reciprocal rank; rows not hit fall back to crowding
        w = np.zeros(n)
        for r in range(depth): np.add.at(w, top[:, r], 1.0 / (r + 1))
        o = np.lexsort((-crowd, -w))
        pts = []
        for f in (0.0, 0.1, 0.2, 0.3, 0.5, 1.0):
            k = int(f * n); D = M.copy(); D[o[:k]] = Y[o[:k]]
            pts.append(round(ndcg_sub(D, ev_rows), 4))
        gap = pts[-1] - pts[0]
        print("log depth", depth, pts, "30% share of gap", round((pts[3] - pts[0]) / gap, 2), "hit rows", int((w > 0).sum()), flush=True)
