"""Development checks of `compatret adapt`'s choices on SciFact's *train* queries (validation; never test).

    python eval/adapt/validation/embed.py minilm-l3 minilm-l6      # corpus, queries, titles, one sentence per doc (cache here)
    python eval/adapt/validation/embed2.py minilm-l3 minilm-l6     # a fixed 2,000-doc subset without its title / its sentence
    python eval/adapt/validation/explore.py minilm-l3 minilm-l6 train 300,1000,5183 [--leak] [--anchors]
    python eval/adapt/validation/curve.py minilm-l3 minilm-l6 train 5183 affine 0.0001

explore.py scores every linear option (direction x kind x ridge) with the cross-fitted part of the
estimate (a pseudo-query answered by the map fitted without its row's fold), the pseudo-query's
row taken out for staying and for the map (`embed2.py`), and prints it beside the judged nDCG@10
of the map fitted on every pair. `--leak` leaves the pseudo-query in its row (staying then finds
the row by its own words); `--anchors` also fits each map on the pseudo-queries' own pairs.
These runs chose titles vs sentences, dropped anchors, and showed the leak; curve.py compared
the plain merge of mapped and native rows with an affine score calibration.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from compatret.adapt import select as S
from compatret.adapt.fit import fit_one
from compatret.core.config import dataset
from compatret.data.beir import load_beir
from compatret.core.transforms import normalize

D = Path(__file__).parent / "cache"
ids = list(np.load(D / "ids.npy"))
qids = list(np.load(D / "qids.npy"))
old, new, split = sys.argv[1], sys.argv[2], sys.argv[3]
leak, anchors = "--leak" in sys.argv, "--anchors" in sys.argv
data = load_beir(dataset("scifact"), splits=("train", "test"))
qrels = data.split(split)
pos = {d: n for n, d in enumerate(ids)}
qpos = {q: n for n, q in enumerate(qids)}


def L(model: str, part: str) -> np.ndarray:
    return np.load(D / f"{model}-{part}.npy")


def ndcg(qv: np.ndarray, dv: np.ndarray, rel: list[set[int]]) -> np.ndarray:
    top = np.argsort(-(normalize(qv) @ normalize(dv).T), axis=1)[:, :10]
    return np.array([sum(1 / np.log2(k + 2) for k, d in enumerate(t) if d in r) / sum(1 / np.log2(k + 2) for k in range(min(len(r), 10)))
                     for t, r in zip(top, rel)])


od, nd, oq, nq = L(old, "docs"), L(new, "docs"), L(old, "queries"), L(new, "queries")
tq = list(qrels)
rel = [{pos[d] for d in qrels[q]} for q in tq]
qi = [qpos[q] for q in tq]
stay_real = ndcg(oq[qi], od, rel).mean()
print(f"{old} -> {new} ({split}): old/old {stay_real:.4f}, new/new {ndcg(nq[qi], nd, rel).mean():.4f}", flush=True)
rng = np.random.default_rng(0)
sub = np.load(D / "sub.npy")
rows = []
for n in [int(a) for a in sys.argv[4].split(",")]:
    sample = np.concatenate([sub, np.setdiff1d(np.arange(len(ids)), sub)])[:n]
    rest = np.setdiff1d(np.arange(len(ids)), sample)
    folds = rng.permutation(np.arange(n) % S.FOLDS)
    k = min(n, len(sub))
    for pq, cut in (("titles", "notitle"), ("sents", "nosent")):
        q_old, q_new = L(old, pq)[sample].copy(), L(new, pq)[sample].copy()
        q_old[k:], q_new[k:] = np.nan, np.nan
        found_by = od[sample].copy()  # what each row is found by: stored vector, or the row without its query
        if not leak:
            found_by[:k] = L(old, cut)[:k]
        probe = S.Probe(found_by, nd[sample], q_old, q_new, od[rest], folds, 0.0)
        fit_probe = S.Probe(od[sample], nd[sample], q_old, q_new, od[rest], folds, 0.0)  # maps fit on the full rows

        def fit(o: S.Option, rows: np.ndarray) -> "S.LearnedMap":
            """The map of `o` on the full rows `rows`; with --anchors, their pseudo-queries' pairs too."""
            x, y = S.training_pairs(fit_probe, rows, o)
            if anchors:
                asked = rows[rows < k]
                src, dst = (q_old[asked], q_new[asked]) if o.direction == "gallery" else (q_new[asked], q_old[asked])
                x, y = np.vstack([x, src]), np.vstack([y, dst])
            return fit_one(o.kind, x, y, o.ridge)

        stay = S.stay_scores(probe)
        for opt in S.options(("gallery", "query"), ("procrustes", "affine")):
            t0 = time.time()
            scores = np.zeros(n)
            for f in range(S.FOLDS):  # fitted on the full rows of the other folds, answered against `found_by`
                held = folds == f
                m = fit(opt, np.flatnonzero(~held))
                mine = np.flatnonzero(held & probe.queried)
                scores[mine] = S._answered(probe, opt, m, mine)  # noqa: SLF001
            est = S.estimate(stay, scores[probe.queried])
            m = fit(opt, np.arange(n))
            real = (ndcg(nq[qi], m(od), rel) if opt.direction == "gallery" else ndcg(m(nq[qi]), od, rel)).mean()
            rows.append(dict(n=n, pq=pq, label=opt.label, real=real, real_change=real - stay_real, **est.to_dict()))
            print(f"n={n:5d} {pq:6s} {opt.label:28s} judged {real:.4f} ({real - stay_real:+.4f})  estimate {est.adapted:.3f} vs "
                  f"staying {est.stay:.3f}: {est.change.mean:+.3f} [{est.change.low:+.3f}, {est.change.high:+.3f}] {time.time() - t0:.1f} s",
                  flush=True)
tag = "-leak" if leak else "-anchors" if anchors else ""
(D / f"explore-{old}-{new}-{split}{tag}.json").write_text(json.dumps(rows))
