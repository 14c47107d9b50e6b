"""What a query returns (and how shards' answers merge into one), and the refusal that names `compatret adapt`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from compatret.core.lineage import IncompatibleLineage

if TYPE_CHECKING:
    pass


@dataclass(frozen=True)
class QueryResult:
    """Top-k of one query, best first; payloads only when asked for."""

    ids: list[str]
    scores: list[float]
    payloads: list[dict[str, Any]] | None = None
    table_version: int = -1  # the table version this answer was read from
    snapshot: int | None = None  # a sharded gallery's: the published snapshot this answer was read from

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ids": self.ids, "scores": self.scores, "table_version": self.table_version}
        if self.snapshot is not None:
            out["snapshot"] = self.snapshot
        if self.payloads is not None:
            out["payloads"] = self.payloads
        return out


class NeedsAdapter(IncompatibleLineage):
    """An upgrade to a model that cannot read the stored rows: the message names the fix,
    `compatret adapt`, with placeholders (an HTTP answer names no server path) or, through
    `for_command`, the user's own gallery and model."""

    def __init__(self, reason: str, gallery: str = "GALLERY", model: str = "MODEL") -> None:
        super().__init__(
            f"{reason}; a model not trained to be compatible joins through a map fitted on the gallery's rows: "
            f"compatret adapt {gallery} --model {model} --out ADAPTER_DIR, then index upgrade to ADAPTER_DIR"
        )
        self.reason = reason

    def for_command(self, gallery: str, model: str) -> NeedsAdapter:
        return NeedsAdapter(self.reason, gallery, model)


def _public_payload(row: dict[str, Any]) -> dict[str, Any]:
    """Payload without raw image bytes (JSON-safe): title, text, metadata, model version, image size."""
    out = {k: row[k] for k in ("title", "text", "metadata", "model_version") if row.get(k) is not None}
    if row.get("image") is not None:
        out["image_bytes"] = len(row["image"])
    return out


def merge_top_k(results: Sequence[QueryResult], k: int, snapshot: int) -> QueryResult:
    """One query's answers from every shard, as one top-k by score (ties: the lower shard first)."""
    hits = [(score, n, i, pos) for n, r in enumerate(results) for pos, (i, score) in enumerate(zip(r.ids, r.scores))]
    hits.sort(key=lambda h: (-h[0], h[1], h[3]))
    best = hits[:k]
    payloads = None
    if results and results[0].payloads is not None:
        payloads = [results[n].payloads[pos] for _, n, _, pos in best]  # type: ignore[index]
    return replace(QueryResult([h[2] for h in best], [h[0] for h in best], payloads), snapshot=snapshot)
