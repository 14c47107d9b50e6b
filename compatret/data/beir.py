"""BEIR-format text sets (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) as one typed record."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from compatret.core.errors import CompatretError
from compatret.data.items import read_jsonl

Qrels = dict[str, dict[str, int]]


@dataclass(frozen=True)
class BeirData:
    """Documents ({"title", "text"} by id), query texts by id, and graded judgements per split."""

    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, Qrels]
    available: tuple[str, ...] = ()  # every split with a qrels file, loaded or not

    def split(self, name: str) -> Qrels:
        """Positive judgements of one split, restricted to queries and documents that exist."""
        if name not in self.qrels:
            raise CompatretError(f"no qrels for split {name!r}: the data has {', '.join(self.available) or 'no qrels/*.tsv'}")
        return {
            q: {d: s for d, s in docs.items() if s > 0 and d in self.corpus}
            for q, docs in self.qrels[name].items()
            if q in self.queries and any(s > 0 and d in self.corpus for d, s in docs.items())
        }

    def items(self) -> list[dict[str, str]]:
        """The corpus as items for `Service.add_items` (id, title, text)."""
        return [{"id": i, "title": d.get("title", ""), "text": d.get("text", "")} for i, d in self.corpus.items()]


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise CompatretError(f"BEIR folder lacks {path.name}: {path}")
    return read_jsonl(path)


def _qrels(path: Path) -> Qrels:
    out: Qrels = {}
    with path.open() as fh:
        for n, line in enumerate(fh, 1):
            parts = line.split()
            if not parts or (n == 1 and not parts[-1].lstrip("-").isdigit()):
                continue  # blank line or the query-id/corpus-id/score header
            if len(parts) < 3:
                raise CompatretError(f"{path}:{n}: expected query-id, corpus-id, score")
            out.setdefault(parts[0], {})[parts[1]] = int(parts[-1])
    return out


def read_queries(path: str | Path) -> dict[str, str]:
    """Query texts by id from a .jsonl file (BEIR's queries.jsonl: `_id` or `id`, and `text`)."""
    p = Path(path)
    if not p.is_file():
        raise CompatretError(f"no query file at {p}")
    out = {}
    for n, row in enumerate(read_jsonl(p), 1):
        qid, text = row.get("_id", row.get("id")), row.get("text")
        if qid is None or not isinstance(text, str) or not text.strip():
            raise CompatretError(f"{p}: query {n} needs an `_id` (or `id`) and a non-empty `text`")
        out[str(qid)] = text
    if not out:
        raise CompatretError(f"{p} holds no queries")
    return out


def read_qrels(path: str | Path) -> Qrels:
    """Positive judgements from a BEIR qrels TSV (query-id, corpus-id, score)."""
    p = Path(path)
    if not p.is_file():
        raise CompatretError(f"no qrels file at {p}")
    qrels = {q: {d: s for d, s in docs.items() if s > 0} for q, docs in _qrels(p).items()}
    qrels = {q: docs for q, docs in qrels.items() if docs}
    if not qrels:
        raise CompatretError(f"{p} holds no positive judgements")
    return qrels


def load_beir(folder: str | Path, splits: tuple[str, ...] = ("train", "test")) -> BeirData:
    """Read a BEIR folder; splits without a qrels file are left out (asking for one later errors)."""
    root = Path(folder)
    if not root.is_dir():
        raise CompatretError(f"no BEIR data folder at {root}")
    corpus = {str(d["_id"]): {"title": d.get("title") or "", "text": d.get("text") or ""} for d in _jsonl(root / "corpus.jsonl")}
    queries = {str(q["_id"]): str(q.get("text", "")) for q in _jsonl(root / "queries.jsonl")}
    qrels = {s: _qrels(root / "qrels" / f"{s}.tsv") for s in splits if (root / "qrels" / f"{s}.tsv").exists()}
    if not corpus or not queries:
        raise CompatretError(f"{root}: empty corpus or queries")
    available = tuple(sorted(p.stem for p in (root / "qrels").glob("*.tsv")))
    return BeirData(corpus, queries, qrels, available)
