"""Rows not yet on the serving model's vectors: what a backfill has left to do."""

from __future__ import annotations

from dataclasses import dataclass

from compatret.store.gallery import Gallery
from compatret.store.meta import GalleryMeta
from compatret.store.rows import sql_quote


def _payload_filter(modality: str) -> str:
    """Rows that hold something the serving model can embed."""
    if modality == "image":
        return "image IS NOT NULL"
    return "((text IS NOT NULL AND text != '') OR (title IS NOT NULL AND title != ''))"


@dataclass(frozen=True)
class Pending:
    """Rows not yet written by the serving model, read from the table."""

    ids: list[str]  # re-embeddable
    unembeddable: list[str]  # no text or image stored: skipped, never invented


def pending_rows(gallery: Gallery) -> Pending:
    """Rows whose vector was made by a model other than the serving one (from the table itself)."""
    gallery.latest_version()
    embeddable, bare = _pending_filters(gallery.meta)
    ids = gallery.scan(["id"], where=embeddable).column("id").to_pylist()  # in table order
    bare_ids = gallery.scan(["id"], where=bare).column("id").to_pylist()
    return Pending([str(i) for i in ids], [str(i) for i in bare_ids])


def pending_counts(gallery: Gallery, counts: dict[str, int]) -> tuple[int, int]:
    """(re-embeddable, unembeddable) rows not on the serving model, without listing their ids
    (a status poll at 10M rows must not build 10M strings): `counts` (rows_by_version) gives the
    rows on other models; only those without a payload are counted in the table."""
    meta = gallery.meta
    bare = int(gallery.dataset().count_rows(filter=_pending_filters(meta)[1]))
    others = sum(n for v, n in counts.items() if v != meta.serving.id)
    return max(others - bare, 0), bare


def _pending_filters(meta: GalleryMeta) -> tuple[str, str]:
    """Filters of the rows not on the serving model: those a backfill re-embeds, those it skips."""
    older = f"model_version != {sql_quote(meta.serving.id)}"
    has = _payload_filter(meta.modality)
    return f"{older} AND {has}", f"{older} AND NOT {has}"
