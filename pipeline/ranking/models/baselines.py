"""Simple baselines that any honest comparison needs, behind the same interface as the neural ranker.

    Popularity   score = number of training interactions of the item (the same list for every user)
    MF           score = <p_u, q_i>, trained with BPR (Rendle et al., UAI 2009) or pointwise BCE
    EASE         score = x_u B, B the closed-form item-item model of Steck (WWW 2019)

Each is an `nn.Module` whose state lives in parameters or buffers, so one checkpoint format (a state dict) and
one evaluator (`score`, `score_all`) serve every run. `trainable = False` marks the closed-form ones, which
"train" by calling `fit` once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Container, Iterator, Sequence

import numpy as np
import scipy.linalg
import scipy.sparse
import torch
from torch import nn

from pipeline.ranking.training.losses import bpr, pointwise_bce
from pipeline.ranking.protocol import ClosedFormRanker, TrainableRanker
from pipeline.ranking.training.sampling import PairSet

if TYPE_CHECKING:
    from pipeline.ranking.selection.choice import Choice


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

    fits_on_device = True

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


ROW_BLOCK = 1024  # rows of an n_items^2 matrix built at a time (8 MB per 1k items in float64)


def on_accelerator(matrix: torch.Tensor) -> bool:
    """Whether the closed forms take torch's linear algebra on the matrix's own device (CUDA, MPS) rather than
    LAPACK in place on the CPU: the one switch between the two code paths (tests set it to run the accelerator's
    path on the CPU).

    Parameters
    ----------
    matrix
        The Gram (or any matrix) a closed form is about to decompose or invert.

    Returns
    -------
    bool
        True when `matrix` lives on a device other than the CPU.
    """
    return matrix.device.type != "cpu"


def ridge_inverse_(gram: torch.Tensor, ease_lambda: float) -> torch.Tensor:
    """(G + lambda I)^-1, written over G (float64, row-major). G is PSD, so G + lambda I is positive definite for
    lambda > 0: LAPACK's Cholesky factorisation and inverse (potrf, potri) run in G's own memory and the inverse's
    triangle is mirrored a block of rows at a time, where `torch.linalg.inv(G + lambda I)` held the identity, the
    sum, LAPACK's copy and the inverse beside G (at 17k items each is 2.3 GB). (n, n) -> the same tensor"""
    if gram.dtype != torch.float64 or not gram.is_contiguous():
        raise ValueError("ridge_inverse_ works in place on a contiguous float64 matrix")
    gram.diagonal().add_(ease_lambda)
    if on_accelerator(gram):  # the device's Cholesky: two n^2 matrices for a moment, in the device's memory
        factor, info = torch.linalg.cholesky_ex(gram)
        if int(info):
            raise ValueError(f"X^T X + lambda I is not positive definite at lambda = {ease_lambda} (info {int(info)}): "
                             "lambda must be > 0")
        return gram.copy_(torch.cholesky_inverse(factor))
    column_major = gram.numpy().T  # the same memory, as LAPACK reads it (G is symmetric: the same matrix)
    factor, info = scipy.linalg.lapack.dpotrf(column_major, lower=False, overwrite_a=True)
    if info == 0:
        _, info = scipy.linalg.lapack.dpotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise ValueError(f"X^T X + lambda I is not positive definite at lambda = {ease_lambda} (LAPACK info {info}): "
                         "lambda must be > 0")
    for start in range(0, len(gram), ROW_BLOCK):  # LAPACK's upper triangle is this row-major matrix's lower one
        stop = start + ROW_BLOCK
        gram[start:stop, stop:] = gram[stop:, start:stop].T
        block = gram[start:stop, start:stop]
        block.copy_(block.tril() + block.tril(-1).T)
    return gram


def ease_from_inverse_(p: torch.Tensor) -> torch.Tensor:
    """EASE's B = I - P diag(1 / diag P) with its zero diagonal, B_ij = -P_ij / P_jj, written over P."""
    p.div_(torch.diagonal(p).clone()[None, :]).neg_()
    return p.fill_diagonal_(0.0)


def ease_weights(gram: torch.Tensor, ease_lambda: float) -> torch.Tensor:
    """B = argmin ||X - XB||^2 + lambda ||B||^2 s.t. diag(B) = 0 from G = X^T X (or any PSD item Gram):
    P = (G + lambda I)^-1, B_ij = -P_ij / P_jj, B_jj = 0. G is left as it was.
    (n_items, n_items) -> (n_items, n_items)"""
    own_copy = gram.to(torch.float64, copy=True, memory_format=torch.contiguous_format)  # one copy, float32 or not
    return ease_from_inverse_(ridge_inverse_(own_copy, ease_lambda))


class EigenGram:
    """One eigendecomposition G = V diag(s) V^T of a PSD item Gram, after which (G + lambda I)^-1 for any lambda is a
    diagonal rescale, V diag(1 / (s + lambda)) V^T: a lambda grid costs one n^3 decomposition, not one per value.

    The decomposition is LAPACK's MRRR driver (syevr) working in G's own memory, so G is overwritten: it holds V
    and G (two n^2 matrices) at its peak, where torch.linalg.eigh (divide and conquer) held four: its copy of G, V
    and a workspace of two more. Pass a Gram that is not needed afterwards."""

    def __init__(self, gram: torch.Tensor) -> None:
        if on_accelerator(gram):  # on the device: torch's eigh (four n^2 matrices, in the device's memory)
            self.s, self.v = torch.linalg.eigh(gram.double())
            return
        s, v = scipy.linalg.eigh(gram.double().numpy().T, overwrite_a=True, check_finite=False, driver="evr")
        self.s, self.v = torch.from_numpy(s), torch.from_numpy(v)  # (n,), (n, n)

    @classmethod
    def from_parts(cls, s: torch.Tensor, v: torch.Tensor) -> "EigenGram":
        """A decomposition made before (`pipeline/ranking/shared/gram.py`): eigenvalues (n,) and vectors (n, n)."""
        eigen = cls.__new__(cls)
        eigen.s, eigen.v = s, v
        return eigen

    def to(self, device: torch.device) -> "EigenGram":
        """The decomposition on `device` (itself where it already is)."""
        return self if self.v.device == device else EigenGram.from_parts(self.s.to(device), self.v.to(device))

    def inverse_diagonal(self, ease_lambda: float) -> torch.Tensor:
        """diag((G + lambda I)^-1) without forming it, nor V * V: a block of rows at a time. (n,)"""
        weights = 1.0 / (self.s + ease_lambda)
        return torch.cat([(rows * rows) @ weights for rows in self.v.split(ROW_BLOCK)])

    def ease_weights(self, ease_lambda: float) -> torch.Tensor:
        """EASE's B at this lambda, B_ij = -P_ij / P_jj with a zero diagonal, as float32, built a block of rows of P
        at a time: the float64 inverse is never whole. (n, n) float32"""
        scaled, inverse_diagonal = self.v / (self.s + ease_lambda), self.inverse_diagonal(ease_lambda)
        b = torch.empty(self.v.shape, dtype=torch.float32, device=self.v.device)
        for start in range(0, len(b), ROW_BLOCK):
            rows = slice(start, start + ROW_BLOCK)
            b[rows] = (scaled[rows] @ self.v.T).div_(inverse_diagonal[None, :]).neg_()
        return b.fill_diagonal_(0.0)

    def times_inverse(self, rows_v: torch.Tensor, ease_lambda: float) -> torch.Tensor:
        """x (G + lambda I)^-1 from x V (precomputed once per Gram). (b, n) -> (b, n)"""
        return (rows_v / (self.s + ease_lambda)) @ self.v.T

    def inverse_times(self, v_columns: torch.Tensor, ease_lambda: float) -> torch.Tensor:
        """(G + lambda I)^-1 C from V^T C (n, d): one (n, n) x (n, d) product. (n, d) -> (n, d)"""
        return self.v @ (v_columns / (self.s + ease_lambda)[:, None])

    def ease_scores(self, x: torch.Tensor, rows_v: torch.Tensor, ease_lambda: float) -> torch.Tensor:
        """x B for EASE's B = I - P diag(1 / diag P) (the closed form of `ease_weights`), without forming B.
        (b, n) -> (b, n)"""
        return x - self.times_inverse(rows_v, ease_lambda) / self.inverse_diagonal(ease_lambda)


class EASE(ClosedFormRanker):
    """EASE^R (Steck 2019): B = argmin ||X - XB||^2 + lambda ||B||^2 s.t. diag(B) = 0, in closed form:
    P = (X^T X + lambda I)^-1, B_ij = -P_ij / P_jj, B_jj = 0. Memory is n_items^2: fine up to ~20k items."""

    fits_on_device = True

    def __init__(self, n_users: int, n_items: int, ease_lambda: float = 500.0,
                 lambdas: Sequence[float] | None = None) -> None:
        super().__init__()
        self.n_users, self.n_items, self.ease_lambda = n_users, n_items, ease_lambda
        self.grid_lambda = [float(x) for x in (lambdas if lambdas is not None else [ease_lambda])]
        self.register_buffer("B", torch.zeros(n_items, n_items))  # (n_items, n_items)
        self.register_buffer("indptr", torch.zeros(n_users + 1, dtype=torch.int64))  # training matrix X, CSR
        self.register_buffer("indices", torch.zeros(0, dtype=torch.int64))
        self._shared_eigen: EigenGram | None = None  # the training Gram's decomposition, made once per data
        self._search_eigen: EigenGram | None = None  # the one a lambda search ranks from, until `apply`

    def use_shared_eigen(self, eigen: EigenGram | None) -> None:
        self._shared_eigen = eigen

    def training_eigen(self, gram: torch.Tensor | None = None) -> EigenGram:
        """The decomposition of the fitted pairs' Gram a search starts from: the shared one where `use_shared_eigen`
        gave it (on this model's device), else `gram`'s own (overwritten; built from the pairs when None)."""
        if self._shared_eigen is not None:
            return self._shared_eigen.to(self.indptr.device)
        return EigenGram(self.gram() if gram is None else gram)

    def fit(self, users: np.ndarray, items: np.ndarray) -> "EASE":
        self.hold_pairs(users, items)
        self.solve(self.ease_lambda)
        return self

    def solve(self, ease_lambda: float) -> None:
        """B at this lambda from the held pairs; the old B is let go first (one n^2 matrix less at the peak)."""
        self.B = torch.empty(0)
        self.B = ease_from_inverse_(ridge_inverse_(self.gram(), ease_lambda)).float()

    def hold_pairs(self, users: np.ndarray, items: np.ndarray) -> None:
        """Keep the pairs as the history matrix X (CSR): the rows x_u scores are read from, and the gram's source."""
        pairs = PairSet(users, items, self.n_users, self.n_items)
        self._search_eigen = None  # a search of other pairs' decomposition
        device = self.indptr.device  # where the model was put (train.device), kept across refits
        self.indptr = torch.as_tensor(pairs.indptr, dtype=torch.int64, device=device)
        self.indices = torch.as_tensor(pairs.indices, dtype=torch.int64, device=device)

    def refit(self, users: np.ndarray, items: np.ndarray, choice: "Choice[float] | None") -> "EASE":
        """One solve, at the chosen lambda."""
        if choice is not None:
            self.ease_lambda = choice.setting
        return self.fit(users, items)

    def candidate_count(self) -> int:
        return len(self.grid_lambda) if len(self.grid_lambda) > 1 else 0

    def fit_on_validation(self, users: np.ndarray, items: np.ndarray,
                          validation: Callable[[], dict] | None) -> tuple[list[dict], int]:
        """With a lambda grid and validation to choose on, hold the pairs only: `apply` solves the chosen lambda."""
        if validation is None or len(self.grid_lambda) < 2:
            return super().fit_on_validation(users, items, validation)
        self.hold_pairs(users, items)
        return [], 0

    def candidates(self, users: torch.Tensor, only: Container | None = None) -> Iterator[tuple[float, None]]:
        """With 2+ lambdas, each in grid order (`only`: these), B from one eigendecomposition of X^T X, made at the
        first call and kept until `apply`; ranked as the model stands."""
        if len(self.grid_lambda) < 2:
            return
        self.B = torch.empty(0)  # each lambda's B replaces it
        if self._search_eigen is None:
            self._search_eigen = self.training_eigen()
        eig = self._search_eigen
        for lam in self.grid_lambda:
            if only is not None and lam not in only:
                continue
            self.B = torch.empty(0)
            self.B = eig.ease_weights(lam)
            yield lam, None

    def apply(self, choice: "Choice[float]") -> None:
        """The chosen lambda, B solved directly at it."""
        self.ease_lambda = choice.setting
        self._search_eigen = None
        self.solve(self.ease_lambda)

    def choices(self) -> dict | None:
        if len(self.grid_lambda) < 2:
            return None
        return {"ease_lambda": self.ease_lambda, "validation_looks": len(self.grid_lambda)}

    def gram(self) -> torch.Tensor:
        """X^T X of the fitted pairs (training, or training + validation after the final fit), float64 (n, n).
        On the CPU a sparse product, then made dense: a dense (users x items) product costs n_users n_items^2 (27 s
        at the paper's size, against about one) for the same integer counts; on an accelerator the dense product."""
        if on_accelerator(self.indptr):
            x = csr_rows(self.indptr, self.indices, torch.arange(self.n_users, device=self.indptr.device),
                         self.n_items).double()
            return x.T @ x
        x = scipy.sparse.csr_array((np.ones(len(self.indices)), self.indices.numpy(), self.indptr.numpy()),
                                   shape=(self.n_users, self.n_items))
        return torch.from_numpy((x.T @ x).toarray(order="C"))

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
