"""Validation cache 2 (see explore.py): docs with their pseudo-query taken out (title removed / sentence removed), for a fixed 2000-doc subset."""
import re, sys, time
from pathlib import Path
import numpy as np
from compatret.core.config import dataset
from compatret.data.beir import load_beir
from compatret.encoders.registry import load_encoder
OUT = Path(__file__).parent / "cache"
OUT.mkdir(exist_ok=True)
data = load_beir(dataset("scifact"), splits=("test",))
ids = list(data.corpus)
items = [{"title": data.corpus[i].get("title", ""), "text": data.corpus[i].get("text", "")} for i in ids]
rng = np.random.default_rng(0)
def sentence(text):  # same draw order as embed.py
    s = [x for x in re.split(r"(?<=[.!?])\s+", text) if len(x.split()) >= 5]
    return s[rng.integers(len(s))] if s else text[:200]
sents = [sentence(it["text"]) for it in items]
sub = np.random.default_rng(42).permutation(len(ids))[:2000]
np.save(OUT / "sub.npy", sub)
notitle = [{"title": "", "text": items[i]["text"]} for i in sub]
nosent = [{"title": items[i]["title"], "text": items[i]["text"].replace(sents[i], " ").strip()} for i in sub]
for name in sys.argv[1:]:
    enc = load_encoder(name)
    for part, texts in (("notitle", notitle), ("nosent", nosent)):
        t = time.time(); v = enc.encode_items(texts, batch_size=32); np.save(OUT / f"{name}-{part}.npy", v)
        print(name, part, v.shape, f"{time.time()-t:.1f}s", flush=True)
