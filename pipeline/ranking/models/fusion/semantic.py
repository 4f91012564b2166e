"""The review branches: fixed profiles b_u, b_i (means of training-review vectors) read two ways, plus a cosine.

    PaperSemantic      l_s = (u_s (.) b_u) (.) (i_s (.) b_i)        (dim,)  the paper's eq. 8 with profiles in place
                                                                            of the pair's own review (which leaks)
    ProjectedSemantic  l_s = (A b_u) (.) (B b_i)                    (factors,)  shared projections learned on every
                                                                            user, so a user with few interactions
                                                                            still gets a text term
    TextSimilarity     l_t = cos(b_u, b_i)                          (1,)  the fixed zero-shot match; its weight in
                                                                            the head is learned

The profiles are non-persistent buffers: never trained and never saved (a checkpoint records the cache's
fingerprint and the cache is reloaded and checked instead).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PaperSemantic(nn.Module):
    """The paper's semantic branch (eq. 8) on fixed profiles: l_s = (u_s (.) b_u) (.) (i_s (.) b_i), width dim.

    The gates u_s, i_s are learned per user and per item and start at 1; the profiles are non-persistent buffers.

    Parameters
    ----------
    b_u, b_i : (n_users, dim) and (n_items, dim) user and item profiles.
    """

    def __init__(self, b_u: torch.Tensor, b_i: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("b_u", b_u, persistent=False)  # (n_users, dim)
        self.register_buffer("b_i", b_i, persistent=False)  # (n_items, dim)
        n_users, dim = b_u.shape
        self.width = dim
        # u_s, i_s start at 1 so l_s starts as the profile agreement b_u (.) b_i; two small random inits would
        # multiply to ~1e-4 and leave the branch with vanishing gradients.
        self.user_gate = nn.Embedding(n_users, dim)  # u_s
        self.item_gate = nn.Embedding(b_i.shape[0], dim)  # i_s
        nn.init.ones_(self.user_gate.weight)
        nn.init.ones_(self.item_gate.weight)

    def user_side(self, users: torch.Tensor) -> torch.Tensor:
        """u_s (.) b_u for `users`: (b,) -> (b, dim)."""
        return self.user_gate(users) * self.b_u[users]  # (b, dim)

    def item_side(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """i_s (.) b_i for `items`, or for every item when `items` is None."""
        if items is None:
            return self.item_gate.weight * self.b_i
        return self.item_gate(items) * self.b_i[items]

    def forward(self, users: torch.Tensor, items: torch.Tensor, keep: torch.Tensor | float = 1.0) -> torch.Tensor:
        """l_s for each (user, item) pair: (b,), (b,) -> (b, width); `keep` is ignored (text terms have no user-ID
        dropout)."""
        return self.user_side(users) * self.item_side(items)  # text terms ignore user-ID dropout

    def score_all(self, users: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """w^T l_s for every item: (b,), (width,) -> (b, n_items)."""
        return (self.user_side(users) * w) @ self.item_side().T  # (b, n_items)


class ProjectedSemantic(PaperSemantic):
    """The projected semantic branch: l_s = (A b_u) (.) (B b_i), width `factors`.

    The projections A and B are shared by every user and every item, so a user with few interactions still gets a
    text term.

    Parameters
    ----------
    b_u, b_i : (n_users, dim) and (n_items, dim) user and item profiles (the fusion head passes them centred).
    factors : The projections' output size, and the branch's output width (`width`).
    """

    def __init__(self, b_u: torch.Tensor, b_i: torch.Tensor, factors: int) -> None:
        nn.Module.__init__(self)
        self.register_buffer("b_u", b_u, persistent=False)
        self.register_buffer("b_i", b_i, persistent=False)
        self.width = factors
        self.proj_user = nn.Linear(b_u.shape[1], factors, bias=False)  # A
        self.proj_item = nn.Linear(b_i.shape[1], factors, bias=False)  # B

    def user_side(self, users: torch.Tensor) -> torch.Tensor:
        """A b_u for `users`: (b,) -> (b, factors)."""
        return self.proj_user(self.b_u[users])  # (b, factors)

    def item_side(self, items: torch.Tensor | None = None) -> torch.Tensor:
        """B b_i for `items`, or for every item when `items` is None: -> (b, factors) or (n_items, factors)."""
        return self.proj_item(self.b_i if items is None else self.b_i[items])


class TextSimilarity(nn.Module):
    """The fixed text match l_t = cos(b_u, b_i), width 1; nothing in it is trained (its weight in the head is).

    Parameters
    ----------
    b_u, b_i : (n_users, dim) and (n_items, dim) user and item profiles, stored L2-normalised as non-persistent buffers.
    """

    def __init__(self, b_u: torch.Tensor, b_i: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("unit_u", F.normalize(b_u, dim=-1, eps=1e-8), persistent=False)  # (n_users, dim)
        self.register_buffer("unit_i", F.normalize(b_i, dim=-1, eps=1e-8), persistent=False)  # (n_items, dim)
        self.width = 1

    def forward(self, users: torch.Tensor, items: torch.Tensor, keep: torch.Tensor | float = 1.0) -> torch.Tensor:
        """cos(b_u, b_i) for each (user, item) pair: (b,), (b,) -> (b, 1); `keep` is ignored."""
        return (self.unit_u[users] * self.unit_i[items]).sum(-1, keepdim=True)  # (b, 1)

    def score_all(self, users: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """w cos(b_u, b_i) for every item: (b,), (1,) -> (b, n_items)."""
        return w * (self.unit_u[users] @ self.unit_i.T)  # (b, n_items)
