"""Heads on a SentenceTransformer: the BT²/OCA extension head (exported as a stock Dense module)
and the least-squares alignment map into an old model's space.

Training uses the structured head (orthogonal map over [h; E h]); a saved model holds the
equivalent single linear map as sentence-transformers' own Dense module, because
sentence-transformers 6 loads modules outside its namespace only with trust_remote_code.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from compatret.models.heads.basis_transform import BasisTransform


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
        return _linear_dense(self.linear_map().detach().cpu().clone())


@torch.no_grad()
def alignment_map(new: Tensor, old: Tensor) -> nn.Module:
    """Dense(d_new -> d_old) minimising ||normalize(new) W - normalize(old)||² + ridge||W||²: the new space read as the old one.

    A start model of another architecture shares no coordinates with the gallery; this
    least-squares fit over documents both models embedded is where compatible training
    then starts from (a cross-architecture upgrade would otherwise begin near chance).
    """
    x = torch.nn.functional.normalize(new.double(), dim=1)
    y = torch.nn.functional.normalize(old.double(), dim=1)
    gram = x.T @ x
    ridge = 1e-3 * gram.trace() / len(gram)  # keeps the fit defined with fewer documents than dims
    w = torch.linalg.solve(gram + ridge * torch.eye(len(gram), dtype=gram.dtype), x.T @ y)  # [d_new, d_old]
    return _linear_dense(w.T.float().contiguous())


def _linear_dense(weight: Tensor) -> nn.Module:
    """sentence-transformers' own Dense module computing x @ weight.T (no bias, no activation)."""
    from sentence_transformers.base.modules.dense import Dense

    out_dim, in_dim = weight.shape
    return Dense(in_dim, out_dim, bias=False, activation_function=nn.Identity(), init_weight=weight)
