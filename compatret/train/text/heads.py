"""The BT²/OCA extension head on a SentenceTransformer, and its export to a stock Dense module.

Training uses the structured head (orthogonal map over [h; E h]); a saved model holds the
equivalent single linear map as sentence-transformers' own Dense module, because
sentence-transformers 6 loads modules outside its namespace only with trust_remote_code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from compatret.heads.basis_transform import BasisTransform


class ExtensionHead(nn.Module):
    """[h; E h] rotated by an orthogonal (d + K) map: the old space keeps the prefix at the start.

    E starts small and random (at exactly zero the extra dims would get no gradient) and the
    rotation at the identity, so the first d dims equal the old embedding before training.
    """

    def __init__(self, dim: int, extra_dims: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.dim = dim
        self.extra_dims = extra_dims
        self.expand = nn.Linear(dim, extra_dims, bias=False)
        nn.init.normal_(self.expand.weight, std=init_std)
        self.rotate = BasisTransform(dim, extra_dims)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        x = features["sentence_embedding"]
        features["sentence_embedding"] = self.rotate(torch.cat([x, self.expand(x)], dim=-1))
        return features

    def get_embedding_dimension(self) -> int:
        return self.dim + self.extra_dims

    @torch.no_grad()
    def linear_map(self) -> Tensor:
        """The [(d + K), d] matrix M with head(x) = x @ M.T."""
        stacked = torch.cat([torch.eye(self.dim, device=self.expand.weight.device), self.expand.weight])
        return self.rotate.matrix @ stacked

    def to_dense(self) -> nn.Module:
        """The same map as a sentence-transformers Dense module (no bias, no activation)."""
        from sentence_transformers.base.modules.dense import Dense

        m = self.linear_map().detach().cpu().clone()
        return Dense(self.dim, self.dim + self.extra_dims, bias=False, activation_function=nn.Identity(), init_weight=m)
