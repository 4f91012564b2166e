"""NCF's generalised matrix factorisation branch (He et al., WWW 2017, eq. 9): l_g = u_g (.) i_g."""

from __future__ import annotations

import torch
from torch import nn


class GMFBranch(nn.Module):
    """NCF's GMF branch: the element-wise product of a user and an item embedding, l_g = u_g (.) i_g.

    Parameters
    ----------
    n_users, n_items : Sizes of the ID embeddings.
    factors : The embedding size, and the branch's output width (`width`).
    """

    def __init__(self, n_users: int, n_items: int, factors: int) -> None:
        super().__init__()
        self.width = factors
        self.user = nn.Embedding(n_users, factors)  # u_g
        self.item = nn.Embedding(n_items, factors)  # i_g
        nn.init.normal_(self.user.weight, std=0.01)  # NCF's initialisation
        nn.init.normal_(self.item.weight, std=0.01)

    def forward(self, users: torch.Tensor, items: torch.Tensor, keep: torch.Tensor | float = 1.0) -> torch.Tensor:
        """(b,), (b,) -> (b, factors); `keep` scales the user's embedding (user-ID dropout)."""
        return (self.user(users) * keep) * self.item(items)

    def score_all(self, users: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """w^T l_g for every item: bilinear, so one matrix product. (b,), (factors,) -> (b, n_items)"""
        return (self.user(users) * w) @ self.item.weight.T
