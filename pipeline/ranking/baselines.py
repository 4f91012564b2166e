"""Simple baselines that any honest comparison needs, behind the same interface as the neural ranker.

    Popularity   score = number of training interactions of the item (the same list for every user)
    MF           score = <p_u, q_i>, trained with BPR (Rendle et al., UAI 2009) or pointwise BCE
    EASE         score = x_u B, B the closed-form item-item model of Steck (WWW 2019)

Each is an `nn.Module` whose state lives in parameters or buffers, so one checkpoint format (a state dict) and
one evaluator (`score`, `score_all`) serve every run. `trainable = False` marks the closed-form ones, which
"train" by calling `fit` once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from pipeline.ranking.losses import bpr, pointwise_bce
from pipeline.ranking.protocol import ClosedFormRanker, TrainableRanker
from pipeline.ranking.sampling import PairSet

if TYPE_CHECKING:
    from pipeline.ranking.select import Choice


def csr_rows(indptr: torch.Tensor, indices: torch.Tensor, users: torch.Tensor, n_items: int) -> torch.Tensor:
    """Dense 0/1 float rows (b, n_items) of a CSR user-item matrix, without a per-user loop."""
    starts, ends = indptr[users], indptr[users + 1]
    lengths = ends - starts  # (b,)
    rows = torch.repeat_interleave(torch.arange(len(users), device=users.device), lengths)
    first = torch.repeat_interleave(starts - (torch.cumsum(lengths, 0) - lengths), lengths)
    cols = indices[first + torch.arange(int(lengths.sum()), device=users.device)]
    out = torch.zeros((len(users), n_items), device=users.device)
    out[rows, cols] = 1.0
    return out


def score_via_all(model: nn.Module, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Pair scores from `score_all` over the distinct users only: sampled evaluation repeats each user ~100 times,
    so scoring every pair's full row would cost (pairs x n_items) instead of (users x n_items). (b,) -> (b,)"""
    distinct, row = torch.unique(users, return_inverse=True)
    return model.score_all(distinct)[row, items]


class Popularity(ClosedFormRanker):
    """Most-popular: every user gets the items with the most training interactions."""

    def __init__(self, n_users: int, n_items: int) -> None:
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.register_buffer("counts", torch.zeros(n_items))  # (n_items,)

    def fit(self, users: np.ndarray, items: np.ndarray) -> "Popularity":
        self.counts.copy_(torch.as_tensor(np.bincount(items, minlength=self.n_items), dtype=torch.float32))
        return self

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.counts[items]

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.counts.expand(users.shape[0], self.n_items)

    def score_items(self, users: torch.Tensor, item_slice: slice) -> torch.Tensor:
        return self.counts[item_slice].expand(users.shape[0], -1)  # (b, slice length), for chunked full ranking

    def score_parts(self, users: torch.Tensor, items: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"popularity": self.score(users, items)}

    def score_parts_all(self, users: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"popularity": self.score_all(users)}


class MatrixFactorization(TrainableRanker):
    """Dot-product MF; `loss` is BPR (pairwise, each positive against each of its negatives) or BCE (eq. 12)."""

    def __init__(self, n_users: int, n_items: int, factors: int = 32, loss: str = "bpr") -> None:
        super().__init__()
        if loss not in ("bpr", "bce"):
            raise ValueError(f"mf loss must be 'bpr' or 'bce', got {loss!r}")
        self.n_users, self.n_items, self.loss_name = n_users, n_items, loss
        self.p = nn.Embedding(n_users, factors)
        self.q = nn.Embedding(n_items, factors)
        nn.init.normal_(self.p.weight, std=0.1)
        nn.init.normal_(self.q.weight, std=0.1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.p(users) * self.q(items)).sum(-1)  # (b,)

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        if self.loss_name == "bce":
            return pointwise_bce(self, users, pos, neg)
        pos_scores = self(users, pos)[:, None]  # (b, 1)
        neg_scores = (self.p(users)[:, None, :] * self.q(neg)).sum(-1)  # (b, k)
        return bpr(pos_scores, neg_scores)

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self(users, items)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.p(users) @ self.q.weight.T  # (b, n_items)

    def score_items(self, users: torch.Tensor, item_slice: slice) -> torch.Tensor:
        return self.p(users) @ self.q.weight[item_slice].T  # (b, slice length), for chunked full ranking

    def score_parts(self, users: torch.Tensor, items: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mf": self.score(users, items)}

    def score_parts_all(self, users: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mf": self.score_all(users)}


def ease_weights(gram: torch.Tensor, ease_lambda: float) -> torch.Tensor:
    """B = argmin ||X - XB||^2 + lambda ||B||^2 s.t. diag(B) = 0 from G = X^T X (or any PSD item Gram):
    P = (G + lambda I)^-1, B_ij = -P_ij / P_jj, B_jj = 0. (n_items, n_items) -> (n_items, n_items)"""
    p = torch.linalg.inv(gram + ease_lambda * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device))
    b = -p / torch.diagonal(p)[None, :]
    b.fill_diagonal_(0.0)
    return b


class EigenGram:
    """One eigendecomposition G = V diag(s) V^T of a PSD item Gram, after which (G + lambda I)^-1 for any lambda is a
    diagonal rescale, V diag(1 / (s + lambda)) V^T: a lambda grid costs one n^3 decomposition, not one per value."""

    def __init__(self, gram: torch.Tensor) -> None:
        self.s, self.v = torch.linalg.eigh(gram.double())  # (n,), (n, n)

    def inverse_diagonal(self, ease_lambda: float) -> torch.Tensor:
        """diag((G + lambda I)^-1) without forming it. (n,)"""
        return (self.v * self.v) @ (1.0 / (self.s + ease_lambda))

    def times_inverse(self, rows_v: torch.Tensor, ease_lambda: float) -> torch.Tensor:
        """x (G + lambda I)^-1 from x V (precomputed once per Gram). (b, n) -> (b, n)"""
        return (rows_v / (self.s + ease_lambda)) @ self.v.T

    def inverse(self, ease_lambda: float) -> torch.Tensor:
        return self.times_inverse(self.v, ease_lambda)

    def ease_scores(self, x: torch.Tensor, rows_v: torch.Tensor, ease_lambda: float) -> torch.Tensor:
        """x B for EASE's B = I - P diag(1 / diag P) (the closed form of `ease_weights`), without forming B.
        (b, n) -> (b, n)"""
        return x - self.times_inverse(rows_v, ease_lambda) / self.inverse_diagonal(ease_lambda)


class EASE(ClosedFormRanker):
    """EASE^R (Steck 2019): B = argmin ||X - XB||^2 + lambda ||B||^2 s.t. diag(B) = 0, in closed form:
    P = (X^T X + lambda I)^-1, B_ij = -P_ij / P_jj, B_jj = 0. Memory is n_items^2: fine up to ~20k items."""

    def __init__(self, n_users: int, n_items: int, ease_lambda: float = 500.0,
                 lambdas: Sequence[float] | None = None) -> None:
        super().__init__()
        self.n_users, self.n_items, self.ease_lambda = n_users, n_items, ease_lambda
        self.grid_lambda = [float(x) for x in (lambdas if lambdas is not None else [ease_lambda])]
        self.register_buffer("B", torch.zeros(n_items, n_items))  # (n_items, n_items)
        self.register_buffer("indptr", torch.zeros(n_users + 1, dtype=torch.int64))  # training matrix X, CSR
        self.register_buffer("indices", torch.zeros(0, dtype=torch.int64))

    def fit(self, users: np.ndarray, items: np.ndarray) -> "EASE":
        self.hold_pairs(users, items)
        self.B = ease_weights(self.gram(), self.ease_lambda).float()
        return self

    def hold_pairs(self, users: np.ndarray, items: np.ndarray) -> None:
        """Keep the pairs as the history matrix X (CSR): the rows x_u scores are read from, and the gram's source."""
        pairs = PairSet(users, items, self.n_users, self.n_items)
        self.indptr = torch.as_tensor(pairs.indptr, dtype=torch.int64)
        self.indices = torch.as_tensor(pairs.indices, dtype=torch.int64)

    def refit(self, users: np.ndarray, items: np.ndarray, choice: "Choice[float] | None") -> "EASE":
        """One solve, at the chosen lambda."""
        if choice is not None:
            self.ease_lambda = choice.setting
        return self.fit(users, items)

    def candidates(self, users: torch.Tensor) -> Iterator[tuple[float, None]]:
        """With 2+ lambdas, each in grid order, B from one eigendecomposition of X^T X; ranked as the model stands."""
        if len(self.grid_lambda) < 2:
            return
        eig = EigenGram(self.gram())
        for lam in self.grid_lambda:
            self.B = (torch.eye(self.n_items, dtype=torch.float64) - eig.inverse(lam) / eig.inverse_diagonal(lam)[None, :]
                      ).fill_diagonal_(0.0).float()
            yield lam, None

    def apply(self, choice: "Choice[float]") -> None:
        """The chosen lambda, B solved directly at it."""
        self.ease_lambda = choice.setting
        self.B = ease_weights(self.gram(), self.ease_lambda).float()

    def choices(self) -> dict | None:
        if len(self.grid_lambda) < 2:
            return None
        return {"ease_lambda": self.ease_lambda, "validation_looks": len(self.grid_lambda)}

    def gram(self) -> torch.Tensor:
        """X^T X of the fitted pairs (training, or training + validation after the final fit), float64."""
        x = csr_rows(self.indptr, self.indices, torch.arange(self.n_users), self.n_items).double()
        return x.T @ x

    def rows(self, users: torch.Tensor) -> torch.Tensor:
        """The users' 0/1 history rows x_u (the pairs last fitted on)."""
        return csr_rows(self.indptr, self.indices, users, self.n_items)  # (b, n_items)

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return score_via_all(self, users, items)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.rows(users) @ self.B

    def score_parts(self, users: torch.Tensor, items: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"ease": self.score(users, items)}

    def score_parts_all(self, users: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"ease": self.score_all(users)}
