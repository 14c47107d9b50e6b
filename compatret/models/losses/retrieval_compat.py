"""Compatibility terms for text item encoders, wrapped around a base retrieval loss.

The old space is given by the gallery's stored item vectors: they play the part of the
old classifier in BCT (each document is its own class), so no old weights are needed.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from compatret.models.losses.ranking import embed_columns
from compatret.models.losses.terms import batch_targets, influence, old_prefix, prefix_cosine, prefix_distance

ItemTerm = Literal["none", "influence", "cosine", "anchor"]


class CompatRetrievalLoss(nn.Module):
    """Base loss (MNRL with hard negatives) plus new-vs-old terms on the first d_old dims.

    labels: [B, 1 + n] gallery rows of each query's positive then its hard negatives.
    Parts: "retrieval" (base), "compat_query" (new query vs old item vectors, InfoNCE:
    BCT's influence loss with documents as classes), "compat_item" (new item vs its
    own old vector: "influence" = InfoNCE as BCT, "cosine" = 1 - cos as BT², "anchor" =
    InfoNCE + squared distance to the old vector as OCA's prototype loss), "total".
    """

    old_vectors: Tensor

    def __init__(
        self,
        model: nn.Module,
        old_vectors: Tensor,
        item_term: ItemTerm = "influence",
        query_weight: float = 1.0,
        item_weight: float = 1.0,
        scale: float = 20.0,
    ) -> None:
        super().__init__()
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

        self.model = model
        self.base = MultipleNegativesRankingLoss(model, scale=scale)  # type: ignore[arg-type]
        self.register_buffer("old_vectors", F.normalize(old_vectors.detach().float(), dim=1), persistent=False)
        self.d_old = old_vectors.shape[1]
        self.item_term = item_term
        self.query_weight = query_weight
        self.item_weight = item_weight
        self.scale = scale

    def _infonce(self, new: Tensor, cand_rows: Tensor, own_rows: Tensor) -> Tensor:
        """new[i] must score old vector cand_rows[i] above the batch's other old vectors.

        Candidates with the same row as the target (a document that is also another
        query's negative) are masked, so a document is never its own negative.
        """
        target = batch_targets(new)
        same = cand_rows[None, :] == own_rows[:, None]
        same[target, target] = False
        return influence(old_prefix(new, self.d_old), self.old_vectors[cand_rows], target, self.scale, mask=same)

    def forward(self, features: list[dict[str, Tensor]], labels: Tensor) -> dict[str, Tensor]:
        emb = embed_columns(self.model, features)
        retrieval = self.base.compute_loss_from_embeddings(emb, None)  # type: ignore[arg-type]  # MNRL never reads labels; sentence-transformers types them Tensor
        queries, docs = emb[0], torch.cat(emb[1:])  # docs: positives, then each negative column
        rows = labels.T.reshape(-1).to(queries.device)  # same column-major order as docs
        positives = labels[:, 0].to(queries.device)
        zero = queries.sum() * 0.0
        compat_query = self._infonce(queries, rows, positives)  # rows start with the positives
        compat_item = zero if self.item_term == "none" else self._item_term(docs, rows)
        total = retrieval + self.query_weight * compat_query + self.item_weight * compat_item
        return {"retrieval": retrieval, "compat_query": compat_query, "compat_item": compat_item, "total": total}

    def _item_term(self, docs: Tensor, rows: Tensor) -> Tensor:
        prefix = old_prefix(docs, self.d_old)
        old = self.old_vectors[rows]  # unit length already
        if self.item_term == "cosine":
            return prefix_cosine(prefix, old)
        classified = self._infonce(docs, rows, rows)
        if self.item_term == "influence":
            return classified
        return classified + prefix_distance(prefix, old)
