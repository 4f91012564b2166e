"""A low-rank item-item model for catalogues where dense EASE / bert_rs do not fit in memory.

ELSA (Vančura, Alves, Kasalický, Kordík, "Scalable Linear Shallow Autoencoder for Collaborative Filtering",
RecSys 2022) replaces EASE's dense B with a low-rank one whose diagonal is removed by construction:

    B = A A^T - I,   A (n_items, rank) with unit rows (so diag(A A^T) = 1)
    loss = mean_u || norm(x_u) - norm(x_u B) ||^2        (eq. 5-6: row-normalised reconstruction)

trained by minibatch Adam over users. The loss never forms a user's (n_items,) reconstruction: with q = x_u U
(U = A with unit rows, x_u binary) it is 2 - 2 cos(x_u, r_u), where <x_u, r_u> = |q|^2 - |x_u|^2 and
|r_u|^2 = q (U^T U) q^T - 2 |q|^2 + |x_u|^2 (`normalised_reconstruction_loss`). A step then costs
O(nnz x rank + n_items x rank^2) and memory is O(n_items x rank) for A, its gradient and Adam's moments, whatever the
batch: the dense form kept about ten (batch_users, n_items) float32 arrays alive for autograd, ~10 GB at 1M items
and 256 users per batch. Dense EASE there would need ~36 TB.

The review text enters twice, as in bert_rs (pipeline/ranking/models/review_ease.py):
  - A starts from the leading principal directions of the centred unit item profiles F (text_init), so items
    whose reviews read alike start out as neighbours and sparse items keep that similarity where X says little;
  - score = z_u(x_u B) + w z_u(cos(b_u - mu_u, b_i - mu_i)), with w picked on validation (full-ranking NDCG@10),
    z_u standardising over all items. Both terms are low rank, so z_u's mean and standard deviation come in closed
    form (O(rank^2) per user) and `score_items` can score any item slice without building a whole row.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Container, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.embeddings.cache import Profiles
from pipeline.ranking.training.memory import REVIEW_EASE_FOOTPRINT, dense_fits
from pipeline.ranking.models.review_ease import centred_units
from pipeline.ranking.protocol import ClosedFormRanker
from pipeline.ranking.training.sampling import PairSet
from pipeline.ranking.selection.select import SELECTION_METRIC, EarlyStop

if TYPE_CHECKING:
    from pipeline.ranking.selection.choice import Choice

log = logging.getLogger(__name__)

SOLVERS = ("auto", "dense", "scalable")


def resolve_solver(solver: str, n_items: int, budget_gb: float | None, n_users: int = 0, nnz: int = 0,
                   dim: int = 0) -> str:
    """dense | scalable: `auto` picks dense while it fits the budget (train.memory_budget_gb), scalable past it."""
    if solver not in SOLVERS:
        raise ValueError(f"models.bert_rs.solver must be one of {SOLVERS}, got {solver!r}")
    if solver != "auto":
        return solver
    return "dense" if dense_fits(n_items, budget_gb, n_users, nnz, dim, REVIEW_EASE_FOOTPRINT) else "scalable"


def normalised_reconstruction_loss(q: torch.Tensor, count: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """ELSA's loss, mean_u || x_u / |x_u| - r_u / |r_u| ||^2 with r_u = x_u (U U^T - I), from q = x_u U (b, rank),
    count = |x_u|^2 (b,) (binary rows, count > 0: users without training items are not trained on) and
    gram = U^T U (rank, rank), in closed form (see the module docstring)."""
    qq = (q * q).sum(-1)
    inner = qq - count  # <x_u, r_u>
    r_squared = ((q @ gram) * q).sum(-1) - 2 * qq + count  # |r_u|^2
    cosine = inner / (count.sqrt() * r_squared.clamp(min=0).sqrt()).clamp(min=1e-12)
    return (2 - 2 * cosine).mean()


def text_initial_factors(unit_items: torch.Tensor, rank: int, seed: int) -> torch.Tensor:
    """A0: the items' coordinates on the top principal directions of their profiles (padded with small noise when
    rank > dim), so A0 A0^T is the text similarity restricted to its leading components. (n_items, rank)"""
    generator = torch.Generator().manual_seed(seed)
    n, dim = unit_items.shape
    k = min(rank, dim, n)
    _, _, v = torch.linalg.svd(unit_items - unit_items.mean(0), full_matrices=False)  # v: (min(n, dim), dim)
    a = torch.zeros(n, rank)
    a[:, :k] = unit_items @ v[:k].T
    a += 0.01 * torch.randn(n, rank, generator=generator)
    return a


class ScalableItemModel(ClosedFormRanker):
    """ELSA-style low-rank item model with text initialisation and a late text match; see the module docstring."""

    # trains inside `fit` (its own minibatch loop); the text weight is then chosen on validation (select.py)
    ranks_whole_catalogue = True
    solver = "scalable"

    def __init__(
        self,
        n_users: int,
        n_items: int,
        profiles: Profiles | None,
        rank: int = 128,
        epochs: int = 10,
        batch_users: int = 256,
        learning_rate: float = 0.01,
        text_init: bool = True,
        weights: Sequence[float] = (0.0,),
        seed: int = 0,
        patience: int = 3,
    ) -> None:
        super().__init__()
        self.n_users, self.n_items, self.rank = n_users, n_items, rank
        self.epochs, self.batch_users, self.learning_rate = epochs, batch_users, learning_rate
        self.patience = patience
        self.text_init = text_init and profiles is not None
        self.grid_weight, self.seed = [float(w) for w in weights], seed
        self.A = nn.Parameter(torch.zeros(n_items, rank), requires_grad=False)  # (n_items, rank), unit rows once fit
        self.register_buffer("text_weight", torch.tensor(0.0))
        # the passes A was trained for, and how many were scored on validation to choose them (0: none): saved with
        # the weights, so a loaded run says what it was trained for
        self.register_buffer("passes", torch.tensor(0))
        self.register_buffer("passes_scored", torch.tensor(0))
        self.register_buffer("indptr", torch.zeros(n_users + 1, dtype=torch.int64))  # training matrix X, CSR
        self.register_buffer("indices", torch.zeros(0, dtype=torch.int64))
        has_text = profiles is not None
        self.register_buffer("unit_u", centred_units(profiles.users) if has_text else torch.zeros(n_users, 1),
                             persistent=False)  # (n_users, dim)
        self.register_buffer("unit_i", centred_units(profiles.items) if has_text else torch.zeros(n_items, 1),
                             persistent=False)  # (n_items, dim)

    def use_profiles(self, profiles: Profiles) -> None:
        """The user profiles the text match reads from here on (the items' stay the cache's)."""
        self.unit_u = centred_units(profiles.users).to(self.unit_i.device)

    # ------------------------------------------------------------------------------------------------ fitting

    def fit(self, users: np.ndarray, items: np.ndarray, progress: bool = False) -> "ScalableItemModel":
        """`epochs` passes over the users, the last kept (a refit trains the passes chosen on validation)."""
        for _ in self._passes(users, items, progress):
            pass
        return self

    def fit_on_validation(self, users: np.ndarray, items: np.ndarray,
                          validation: Callable[[], dict] | None) -> tuple[list[dict], int]:
        """Up to `epochs` passes, scoring the item model alone (text weight 0) on validation after each: the pass
        kept is the first best, training stops `patience` passes without a better one, and `epochs` becomes the
        passes kept, so that the final fit on training + validation pairs trains as many. Why: how many passes
        suit a catalogue depends on its density, and a fixed count chosen on one world overfits another. The passes
        are chosen on all the validation users, before the guard's halvings judge the text weight (select.py), so
        the plain form's validation score carries that choice's luck on both halves: the guard leans, slightly,
        towards keeping no text."""
        if validation is None:
            return super().fit_on_validation(users, items, validation)
        best = EarlyStop(self.patience)
        best_factors = torch.empty_like(self.A)  # written in place: one copy, however often the best moves
        curve = []
        weight, self.text_weight = self.text_weight, torch.tensor(0.0)
        try:
            for epoch, loss in self._passes(users, items):
                curve.append({"epoch": epoch, "loss": loss, **validation()})
                if best.offer(epoch, curve[-1][f"valid_{SELECTION_METRIC}"]):
                    best_factors.copy_(self.A)
                elif best.spent:
                    break
        finally:
            self.text_weight = weight
        self.A.data, self.epochs = best_factors, best.setting
        self.passes, self.passes_scored = torch.tensor(best.setting), torch.tensor(len(curve))
        log.info("scalable item model: pass %d of %d kept (validation NDCG@10 %.4f)", best.setting, len(curve),
                 best.score)
        return curve, best.setting

    def _passes(self, users: np.ndarray, items: np.ndarray, progress: bool = False) -> Iterator[tuple[int, float]]:
        """Train from the start, standing in each pass's A (unit rows) when it yields (pass number, mean loss).
        Seeded: the same pairs give the same A after n passes, whoever asks."""
        pairs = PairSet(users, items, self.n_users, self.n_items)
        self.indptr = torch.as_tensor(pairs.indptr, dtype=torch.int64)
        self.indices = torch.as_tensor(pairs.indices, dtype=torch.int64)
        generator = torch.Generator().manual_seed(self.seed)
        if self.text_init:
            start = text_initial_factors(self.unit_i, self.rank, self.seed)
        else:
            start = torch.randn(self.n_items, self.rank, generator=generator)
        a = nn.Parameter(F.normalize(start, dim=-1))
        optimizer = torch.optim.Adam([a], lr=self.learning_rate)
        active = np.flatnonzero(pairs.counts() > 0)
        rng = np.random.default_rng(self.seed)
        for epoch in range(self.epochs):
            total = 0.0
            for batch in np.array_split(rng.permutation(active), max(1, len(active) // self.batch_users)):
                rows, cols = self._user_rows(torch.as_tensor(batch))
                unit = F.normalize(a, dim=-1)
                q = torch.zeros(len(batch), self.rank).index_add(0, rows, unit[cols])  # x_u U, (b, rank)
                count = torch.bincount(rows, minlength=len(batch)).float()  # |x_u|^2
                loss = normalised_reconstruction_loss(q, count, unit.T @ unit)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(batch)
            mean_loss = total / max(len(active), 1)
            if progress or epoch == self.epochs - 1:
                log.info("scalable item model epoch %d/%d: loss %.4f", epoch + 1, self.epochs, mean_loss)
            self.A.data = F.normalize(a.detach(), dim=-1)
            self.passes = torch.tensor(epoch + 1)
            yield epoch + 1, mean_loss

    def candidates(self, users: torch.Tensor, only: Container | None = None) -> Iterator[tuple[float, None]]:
        """Each text weight w in grid order (`only`: these), ranked as the model stands (chunked over items)."""
        for w in self.grid_weight:
            if only is not None and w not in only:
                continue
            self.text_weight = torch.tensor(w)
            yield w, None

    def is_plain(self, setting: float) -> bool:
        """Text weight 0: the item model alone (its text initialisation is not a choice made on validation)."""
        return setting == 0.0

    def simplicity(self, setting: float) -> tuple:
        """The item model alone first, then smaller text weights."""
        return (setting > 0, setting)

    def apply(self, choice: "Choice[float]") -> None:
        self.text_weight = torch.tensor(choice.setting)

    def choices(self) -> dict:
        return {"solver": self.solver, "rank": self.rank, "text_init": self.text_init, "epochs": int(self.passes),
                "epochs_scored_on_validation": int(self.passes_scored),
                "text_match": "user_profile", "text_weight": round(float(self.text_weight), 6)}

    # ------------------------------------------------------------------------------------------------ scoring

    def _user_rows(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row in batch, item) of every training pair of the batch's users."""
        starts, ends = self.indptr[users], self.indptr[users + 1]
        lengths = ends - starts
        rows = torch.repeat_interleave(torch.arange(len(users), device=users.device), lengths)
        offsets = torch.arange(int(lengths.sum()), device=users.device) - torch.repeat_interleave(
            torch.cumsum(lengths, 0) - lengths, lengths)
        return rows, self.indices[torch.repeat_interleave(starts, lengths) + offsets]

    def _x(self, users: torch.Tensor, item_slice: slice = slice(None)) -> torch.Tensor:
        """Dense 0/1 training rows restricted to an item slice. (b,) -> (b, slice length)"""
        lo, hi = item_slice.start or 0, self.n_items if item_slice.stop is None else item_slice.stop
        rows, cols = self._user_rows(users)
        keep = (cols >= lo) & (cols < hi)
        out = torch.zeros(len(users), hi - lo, device=users.device)
        out[rows[keep], cols[keep] - lo] = 1.0
        return out

    def _low_rank_parts(self, users: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per user: q = x_u A, |x_u|, the text query, and each term's mean and std over ALL items in closed form."""
        rows, cols = self._user_rows(users)
        q = torch.zeros(len(users), self.rank, device=users.device).index_add_(0, rows, self.A[cols])  # (b, rank)
        count = torch.bincount(rows, minlength=len(users)).float()  # |x_u|
        n = self.n_items
        # item term s = q A^T - x: sum_i s = q . A^T 1 - |x|; sum_i s^2 = q (A^T A) q^T - 2 |q|^2 + |x|
        mean = (q @ self.A.sum(0) - count) / n
        squares = ((q @ (self.A.T @ self.A)) * q).sum(-1) - 2 * (q * q).sum(-1) + count
        std = ((squares - n * mean**2).clamp(min=0) / (n - 1)).sqrt()
        t = self.unit_u[users]  # (b, dim); text term cos = t F^T
        t_mean = t @ self.unit_i.mean(0)
        t_squares = ((t @ (self.unit_i.T @ self.unit_i)) * t).sum(-1)
        t_std = ((t_squares - n * t_mean**2).clamp(min=0) / (n - 1)).sqrt()
        return {"q": q, "mean": mean, "std": std, "t": t, "t_mean": t_mean, "t_std": t_std}

    def _score_parts_slice(self, users: torch.Tensor, item_slice: slice) -> tuple[torch.Tensor, torch.Tensor]:
        p = self._low_rank_parts(users)
        item_model = p["q"] @ self.A[item_slice].T - self._x(users, item_slice)
        text = p["t"] @ self.unit_i[item_slice].T
        item_model = (item_model - p["mean"][:, None]) / (p["std"][:, None] + 1e-8)
        text = (text - p["t_mean"][:, None]) / (p["t_std"][:, None] + 1e-8)
        return item_model, text

    def score_items(self, users: torch.Tensor, item_slice: slice) -> torch.Tensor:
        """Scores against items[item_slice] only. (b,) -> (b, slice length)"""
        item_model, text = self._score_parts_slice(users, item_slice)
        return item_model + self.text_weight * text

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.score_items(users, slice(0, self.n_items))

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        parts = self.score_parts(users, items)
        return parts["item_model"] + parts["text_match"]

    def _has(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """1.0 where (user, item) is a training pair: the removed diagonal of A A^T. (b,) -> (b,)"""
        owners = torch.repeat_interleave(torch.arange(self.n_users, device=users.device), torch.diff(self.indptr))
        keys = owners * self.n_items + self.indices  # sorted: CSR rows in user order, items sorted within a row
        wanted = users * self.n_items + items
        if len(keys) == 0:
            return torch.zeros(len(users), device=users.device)
        pos = torch.searchsorted(keys, wanted).clamp(max=len(keys) - 1)
        return (keys[pos] == wanted).float()

    def score_parts(self, users: torch.Tensor, items: torch.Tensor) -> dict[str, torch.Tensor]:
        distinct, row = torch.unique(users, return_inverse=True)  # sampled evaluation repeats each user ~100 times
        p = {k: v[row] for k, v in self._low_rank_parts(distinct).items()}
        item_model = ((p["q"] * self.A[items]).sum(-1) - self._has(users, items) - p["mean"]) / (p["std"] + 1e-8)
        text = ((p["t"] * self.unit_i[items]).sum(-1) - p["t_mean"]) / (p["t_std"] + 1e-8)
        return {"item_model": item_model, "text_match": self.text_weight * text}
