"""A mixed gallery during backfill (random order), mapped and native rows ranked in one list by their
scores as they are, or with the mapped rows' scores calibrated (an affine map fitted on the titles'
scores against every paired row's top 20). curve.py OLD NEW SPLIT N KIND RIDGE (see explore.py)"""
import sys
import numpy as np
from pathlib import Path
from compatret.core.config import dataset
from compatret.data.beir import load_beir
from compatret.adapt.fit import fit_one
from compatret.core.transforms import normalize
D = Path(__file__).parent / "cache"
ids = list(np.load(D / "ids.npy")); qids = list(np.load(D / "qids.npy"))
data = load_beir(dataset("scifact"), splits=("train", "test"))
old, new, split, n, kind, ridge = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], float(sys.argv[6])
qrels = data.split(split); pos = {d: i for i, d in enumerate(ids)}; qpos = {q: i for i, q in enumerate(qids)}
tq = list(qrels); rel = [{pos[d] for d in qrels[q]} for q in tq]; qi = [qpos[q] for q in tq]
L = lambda m, p: np.load(D / f"{m}-{p}.npy")
od, nd, oq, nq = L(old, "docs"), L(new, "docs"), L(old, "queries"), L(new, "queries")
def ndcg_scores(s):
    top = np.argsort(-s, axis=1)[:, :10]
    return np.mean([sum(1 / np.log2(k + 2) for k, d in enumerate(t) if d in r) / sum(1 / np.log2(k + 2) for k in range(min(len(r), 10))) for t, r in zip(top, rel)])
rng = np.random.default_rng(0)
sample = rng.permutation(len(ids))[:n]
m = fit_one(kind, od[sample], nd[sample], ridge)
mapped = normalize(m(od))
q = normalize(nq[qi])
# calibration fitted on pseudo-queries (titles) of the sample: mapped score -> native score, on each pq's top 20 mapped candidates
pq = normalize(L(new, "titles")[sample[:2000]])
sm = pq @ mapped.T; sn = pq @ nd.T
top = np.argsort(-sm, axis=1)[:, :20]
xs = np.take_along_axis(sm, top, 1).ravel(); ys = np.take_along_axis(sn, top, 1).ravel()
a, b = np.polyfit(xs, ys, 1)
print(f"calibration a={a:.3f} b={b:.3f}; old/old {ndcg_scores(normalize(oq[qi]) @ od.T):.4f}")
order = rng.permutation(len(ids))
for f in (0, .1, .3, .5, .75, .9, 1):
    native = np.zeros(len(ids), bool); native[order[:int(f * len(ids))]] = True
    s_raw = np.where(native, q @ nd.T, q @ mapped.T)
    s_cal = np.where(native, q @ nd.T, a * (q @ mapped.T) + b)
    print(f"{f:4.0%} raw {ndcg_scores(s_raw):.4f} calibrated {ndcg_scores(s_cal):.4f}")
