"""Validation cache (see explore.py): SciFact corpus, queries, titles and one sentence per doc, embedded by each model."""
import re, sys, time
from pathlib import Path
import numpy as np
from compatret.core.config import dataset
from compatret.data.beir import load_beir
from compatret.encoders.registry import load_encoder

OUT = Path(__file__).parent / "cache"
OUT.mkdir(exist_ok=True)
data = load_beir(dataset("scifact"), splits=("train", "test"))
ids = list(data.corpus)
items = [{"title": data.corpus[i].get("title", ""), "text": data.corpus[i].get("text", "")} for i in ids]
qids = list(data.queries)
rng = np.random.default_rng(0)
def sentence(text):
    s = [x for x in re.split(r"(?<=[.!?])\s+", text) if len(x.split()) >= 5]
    return s[rng.integers(len(s))] if s else text[:200]
sents = [sentence(it["text"]) for it in items]
titles = [it["title"] for it in items]
np.save(OUT / "ids.npy", np.array(ids)); np.save(OUT / "qids.npy", np.array(qids))
for name in sys.argv[1:]:
    enc = load_encoder(name)
    for part, texts, fn in (("queries", [data.queries[q] for q in qids], enc.encode_queries), ("titles", titles, enc.encode_queries),
                            ("sents", sents, enc.encode_queries), ("docs", items, enc.encode_items)):
        t = time.time()
        v = fn(texts, batch_size=32)
        np.save(OUT / f"{name}-{part}.npy", v)
        print(name, part, v.shape, f"{time.time()-t:.1f}s", flush=True)
