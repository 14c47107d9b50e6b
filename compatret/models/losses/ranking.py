"""Ranking losses of Zhan et al. 2021 (DRhard): STAR (static hard negatives) and ADORE (LambdaRank).

STAR trains both towers; ADORE trains the query tower only, against frozen item vectors.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def embed_columns(model: nn.Module, features: Iterable[dict[str, Tensor]]) -> list[Tensor]:
    """One sentence embedding per input column (queries, positives, negatives...)."""
    return [model(f)["sentence_embedding"] for f in features]


class StarLoss(nn.Module):
    """Contrastive loss over static hard negatives plus the batch's random negatives.

    This is sentence-transformers' MultipleNegativesRankingLoss on (query, positive,
    hard negative...) columns: every other document in the batch is a random negative,
    which STAR adds so the model keeps ranking easy documents low too.
    """

    def __init__(self, model: nn.Module, scale: float = 20.0) -> None:
        super().__init__()
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

        self.model = model
        self.base = MultipleNegativesRankingLoss(model, scale=scale)  # type: ignore[arg-type]

    def forward(self, features: list[dict[str, Tensor]], labels: Tensor | None = None) -> dict[str, Tensor]:
        ranking = self.base.compute_loss_from_embeddings(embed_columns(self.model, features), labels)  # type: ignore[arg-type]  # MNRL never reads labels; sentence-transformers types them Tensor
        return {"ranking": ranking, "total": ranking}


def delta_ndcg(ranks_pos: Tensor, ranks_neg: Tensor, n_relevant: Tensor) -> Tensor:
    """|ΔnDCG| of swapping a relevant and a non-relevant document (binary gains, 0-based ranks)."""
    discount = lambda r: 1.0 / torch.log2(r.float() + 2.0)  # noqa: E731
    ideal = torch.stack([discount(torch.arange(int(n))).sum() for n in n_relevant.clamp(min=1).flatten()])
    ideal = ideal.view(n_relevant.shape).to(ranks_pos.device)
    return (discount(ranks_pos) - discount(ranks_neg)).abs() / ideal


class AdoreLoss(nn.Module):
    """LambdaRank-style pairwise loss: each (relevant, retrieved negative) pair weighted by |ΔnDCG|.

    Item vectors are the gallery's stored vectors (constants), so only the query encoder
    gets gradients and the old index stays valid: the weights push up exactly the swaps
    that would change nDCG most in the current ranking.
    """

    def __init__(self, scale: float = 20.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, queries: Tensor, items: Tensor, relevant: Tensor, ranks: Tensor, mask: Tensor) -> dict[str, Tensor]:
        """queries [B, d] (with grad); items [B, n, d] frozen; relevant, ranks, mask [B, n]."""
        q = F.normalize(queries, dim=-1)
        scores = self.scale * torch.einsum("bd,bnd->bn", q, F.normalize(items.detach(), dim=-1))
        pos = relevant & mask
        neg = ~relevant & mask
        pair = pos[:, :, None] & neg[:, None, :]  # [B, n, n]: (relevant i, negative j)
        weight = delta_ndcg(ranks[:, :, None], ranks[:, None, :], pos.sum(1)[:, None, None]) * pair
        pairwise = F.softplus(scores[:, None, :] - scores[:, :, None])  # log(1 + e^{-(s_i - s_j)})
        per_query = (weight * pairwise).sum((1, 2))
        lambdarank = per_query.sum() / pos.any(1).sum().clamp(min=1)
        return {"lambdarank": lambdarank, "total": lambdarank}
