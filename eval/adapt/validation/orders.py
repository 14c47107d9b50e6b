"""One adapter on SciFact-1k (made by eval/adapt/run.py, whose work folder this reads), backfilled in
each given order: `index backfill --order auto|random|uncertainty`, judged on the test queries.

    python eval/adapt/validation/orders.py runs/adapt/scifact-1k/adapter-minilm-l3-to-minilm-l6 auto random
"""

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cached import CachedEncoder, corpus_encoder, serve_with  # noqa: E402
from run import FRACTIONS, judged, log, subset_corpus  # noqa: E402

from compatret.core.config import dataset
from compatret.data.beir import load_beir  # noqa: E402
from compatret.engine.backfill import backfill
from compatret.engine.service import Service

WORK = Path(__file__).resolve().parents[3] / "runs" / "adapt"
data = subset_corpus(load_beir(dataset("scifact"), splits=("test",)))
items = [{"title": d.get("title", ""), "text": d.get("text", "")} for d in data.corpus.values()]
enc_new = corpus_encoder("minilm-l6", "minilm-l6-scifact-1k", items, WORK / "cache", log)
model_dir = Path(sys.argv[1])
for order in sys.argv[2:]:
    up = WORK / f"orders-{order}"
    shutil.rmtree(up, ignore_errors=True)
    shutil.copytree(WORK / "scifact-1k" / "gallery-minilm-l3", up)
    s = Service.open(up)
    s.upgrade(str(model_dir))
    served = serve_with(s, CachedEncoder(str(model_dir), enc_new.items))
    points = [judged(served, data)["ndcg_at_10"]]
    for f in FRACTIONS:
        backfill(served, fraction=f, order=order, progress=False)
        points.append(judged(served, data)["ndcg_at_10"])
    print(order, " ".join(f"{p:.4f}" for p in points), flush=True)
