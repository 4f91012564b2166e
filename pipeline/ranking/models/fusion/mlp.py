"""NCF's multi-layer perceptron branch (He et al., WWW 2017, eq. 10-11): l_m = MLP([u_m ; i_m])."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


# (user, item) pairs pushed through the tower at once by `score_all`: a (pairs, layers[0]) float32 block of 4 MB at
# width 128 stays in cache. Blocks of 985 users x 4,096 items (2 GB each, what full ranking at 17k items asked for)
# made scoring memory-bound: an MLP head's epoch, mostly its full-ranking validation, took ~100 s at the paper's
# size, and ~40 s with these blocks (benchmarks/paper_scale.py).
PAIRS_PER_BLOCK = 2**13


class MLPBranch(nn.Module):
    """NCF's MLP branch: a ReLU tower over the concatenated user and item embeddings, l_m = MLP([u_m ; i_m]).

    Parameters
    ----------
    n_users, n_items : Sizes of the ID embeddings.
    layers : The tower's layer widths; `layers[0]` is also the (even) width of [u_m ; i_m], each embedding half of it,
        and the last is the branch's output width (`width`).
    dropout : Dropout after each layer's ReLU (none at 0).
    pairs_per_block : (user, item) pairs pushed through the tower at once by `score_all`.
    """

    def __init__(
        self, n_users: int, n_items: int, layers: Sequence[int], dropout: float = 0.0,
        pairs_per_block: int = PAIRS_PER_BLOCK,
    ) -> None:
        super().__init__()
        if layers[0] % 2:
            raise ValueError(f"mlp_layers[0] = {layers[0]} must be even: it is the size of [u_m ; i_m]")
        half = layers[0] // 2
        self.n_items, self.pairs_per_block = n_items, pairs_per_block
        self.user = nn.Embedding(n_users, half)  # u_m
        self.item = nn.Embedding(n_items, half)  # i_m
        nn.init.normal_(self.user.weight, std=0.01)
        nn.init.normal_(self.item.weight, std=0.01)
        stack: list[nn.Module] = []
        width = layers[0]
        for out in layers:  # z_L = ReLU(W_L^T z_{L-1} + b_L), eq. 11
            stack += [nn.Linear(width, out), nn.ReLU()]
            if dropout > 0:
                stack.append(nn.Dropout(dropout))
            width = out
        self.layers = nn.Sequential(*stack)
        self.width = width

    def forward(self, users: torch.Tensor, items: torch.Tensor, keep: torch.Tensor | float = 1.0) -> torch.Tensor:
        """(b,), (b,) -> (b, layers[-1]); `keep` scales the user's embedding (user-ID dropout)."""
        return self.layers(torch.cat([self.user(users) * keep, self.item(items)], dim=-1))

    def score_all(self, users: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """w^T l_m for every item, (b,) -> (b, n_items).

        The first layer splits into a user part plus an item part; the rest runs over item chunks of about
        `pairs_per_block` / b items, so the tower's blocks stay small whatever the batch and the catalogue.
        """
        first: nn.Linear = self.layers[0]
        half = self.user.weight.shape[1]
        user_part = self.user(users) @ first.weight[:, :half].T + first.bias  # (b, h1)
        item_part = self.item.weight @ first.weight[:, half:].T  # (n_items, h1)
        step = max(1, self.pairs_per_block // max(len(users), 1))
        in_place = not torch.is_grad_enabled()  # ranking: the ReLUs may overwrite their input
        chunks = []
        for start in range(0, self.n_items, step):
            z = (user_part[:, None, :] + item_part[None, start : start + step, :]).flatten(0, 1)  # (b * c, h1)
            for layer in self.layers[1:]:  # 2-D blocks: each Linear is one matrix product, with no copy
                z = z.relu_() if in_place and isinstance(layer, nn.ReLU) else layer(z)
            chunks.append((z @ w).view(len(users), min(step, self.n_items - start)))  # (b, c)
        return torch.cat(chunks, dim=1)
