"""A small retrieval app over SciFact abstracts, built with LangChain on a compatret gallery:
build it, ask it, upgrade its model from another process (no backfill, no restart of the app),
ask again, then backfill (queries may go on meanwhile; this script asks once more after it).

    pip install -e ".[cpu,langchain]"
    python examples/langchain_rag.py --work /tmp/rag            # SciFact from $COMPATRET_DATA

Offline: the gallery starts on minilm-l3 and moves to minilm-l6 through `compatret adapt` (a map
fitted on the gallery's own rows; minilm-l6 was never trained to be compatible with minilm-l3).
`--json` prints one JSON report of every step (what the test of this example reads).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from langchain_core.documents import Document

from compatret.integrations.langchain import CompatretVectorStore

QUESTIONS = [
    "Does vitamin D supplementation lower the risk of fractures?",
    "Which immune cells drive inflammation in atherosclerosis?",
    "Is obesity linked to a higher risk of type 2 diabetes?",
]


def scifact_documents(n: int) -> list[Document]:
    """The first n SciFact abstracts, as LangChain Documents (id, text, title in the metadata)."""
    corpus = Path(os.environ.get("COMPATRET_DATA", "../shared/data"), "scifact", "corpus.jsonl")
    docs = []
    with corpus.open() as f:
        for line in f:
            d = json.loads(line)
            docs.append(Document(page_content=d["text"], metadata={"title": d["title"]}, id=d["_id"]))
            if len(docs) == n:
                break
    return docs


def ask(store: CompatretVectorStore, k: int) -> list[dict[str, Any]]:
    """Each question's top-k through a LangChain retriever: what a RAG chain would put in its prompt."""
    retriever = store.as_retriever(search_kwargs={"k": k})
    return [{"question": q, "ids": [d.id for d in retriever.invoke(q)]} for q in QUESTIONS]


def compatret_cli(*args: str) -> dict[str, Any]:
    """Another process changes the gallery, as an operator would (the app is not told)."""
    done = subprocess.run([sys.executable, "-m", "compatret", *args, "--json"], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"compatret {' '.join(args)} failed: {done.stderr.strip()}")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, type=Path, help="An empty folder for the gallery and the adapter.")
    ap.add_argument("--docs", type=int, default=600, help="SciFact abstracts to index.")
    ap.add_argument("--old", default="minilm-l3", help="The model the app starts on.")
    ap.add_argument("--new", default="minilm-l6", help="The model it moves to (through compatret adapt).")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    report: dict[str, Any] = {}
    say = (lambda *_: None) if args.json else print

    store = CompatretVectorStore.create(args.work / "gallery", model=args.old)
    store.add_documents(scifact_documents(args.docs))
    report["built"] = {"rows": len(store.index), "serving": store.index.serving}
    say(f"built: {len(store.index)} abstracts embedded by {store.index.serving}")
    report["before"] = ask(store, args.k)
    for a in report["before"]:
        say(f"  {a['question']} -> {a['ids']}")

    gallery, adapter = str(args.work / "gallery"), str(args.work / "adapter")
    report["adapt"] = compatret_cli("adapt", gallery, "--model", args.new, "--out", adapter)
    report["upgrade"] = compatret_cli("index", "upgrade", gallery, "--model", adapter)
    say(f"upgraded in another process to {report['upgrade']['serving']}: nothing re-embedded")

    report["after"] = ask(store, args.k)  # the same store object: its next query embeds with the new model
    report["after_serving"] = store.index.serving
    report["fresh_app"] = ask(CompatretVectorStore.open(gallery), args.k)  # what a restarted app would answer
    for a in report["after"]:
        say(f"  {a['question']} -> {a['ids']}")

    done = store.index.backfill()  # re-embeds the old rows with the new model (a server keeps answering meanwhile)
    report["backfill"] = done.to_dict()
    report["after_backfill"] = ask(store, args.k)
    say(f"backfill: {done.done} rows re-embedded in {done.seconds:.1f} s; {done.remaining} left")
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
