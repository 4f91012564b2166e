"""The one interface every ranker implements, so the trainer, the evaluator, the recommender and the server treat
every model alike without probing for attributes.

    Scorer            what the evaluator needs: score_all (every item for a user batch), score_items (an item slice,
                      bounded memory; by default a slice of score_all)
    Ranker            + score (pair scores), score_parts (additive parts that sum to the score, for explanations),
                      choices (settings picked on validation, or None), trainable, ranks_whole_catalogue
    ClosedFormRanker  "trains" by one `fit` on the training pairs; where it has a grid it offers `candidates` and
                      `apply`s the one pipeline/ranking/selection/select.py chooses on validation (it never
                      searches itself); `refit` fits the chosen setting on other pairs (training + validation)
    TrainableRanker   trained by the SGD loop of pipeline/ranking/training/sgd.py through `loss` (epoch kept by
                      select.py's rule)

Abstract methods make a missing piece fail when the model is constructed, not when a stage first calls it.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Container, Iterator

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from pipeline.ranking.selection.choice import Choice


class Scorer(nn.Module, metaclass=ABCMeta):
    """Anything the evaluator can rank with: a score for every item of a user batch."""

    @abstractmethod
    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """(b,) -> (b, n_items)"""

    def score_items(self, users: torch.Tensor, item_slice: slice) -> torch.Tensor:
        """Scores against items[item_slice]. Models that can score a slice without the whole row override this to
        bound full-ranking memory. (b,) -> (b, slice length)"""
        scores = self.score_all(users)
        return scores if (item_slice.start, item_slice.stop) == (0, scores.shape[1]) else scores[:, item_slice]


class Ranker(Scorer):
    """A model every stage can use: pair scores, their additive parts for explanations, and its choices on validation.

    Attributes
    ----------
    trainable : Fitted by the SGD loop (True) or by one closed-form `fit` (False).
    ranks_whole_catalogue : Recommendations rank every item: candidates nearest the user's profile would drop the
        model's own picks.
    """

    trainable: bool = False  # fitted by the SGD loop (True) or by one closed-form `fit` (False)
    # recommendations rank every item: candidates nearest the user's profile would drop the model's own picks
    ranks_whole_catalogue: bool = False

    @abstractmethod
    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Ranking scores of (user, item) pairs. (b,), (b,) -> (b,)"""

    @abstractmethod
    def score_parts(self, users: torch.Tensor, items: torch.Tensor) -> dict[str, torch.Tensor]:
        """Additive contributions that sum to `score`, for explanations. {name: (b,)}"""

    def score_parts_all(self, users: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """Every score part for every item, summing to `score_all`, where one pass gives them (the recommender then
        scores a user's catalogue once); None where it cannot (parts are then computed for the picks only).
        (b,) -> {name: (b, n_items)}"""
        return None

    def choices(self) -> dict | None:
        """Settings the model picked on validation (recorded in run.json), or None when it picks nothing."""
        return None


class ClosedFormRanker(Ranker):
    """A ranker fitted by one `fit` on the training pairs, with no SGD loop.

    Where it has a grid of settings it offers them through `candidates`, and `apply`s the one select.py chooses on
    validation; `refit` fits the chosen setting on other pairs (training + validation).

    Attributes
    ----------
    fits_on_device : `fit`, the search and the final fit run where the model is put (`train.device`); without it the
        model is fitted on the CPU and moved afterwards.
    """

    trainable = False
    # whether `fit`, the search and the final fit run where the model is put (`train.device`: decompositions,
    # solves and scoring on a GPU when there is one); a model without it is fitted on the CPU and moved afterwards
    fits_on_device = False

    @abstractmethod
    def fit(self, users: np.ndarray, items: np.ndarray) -> "ClosedFormRanker":
        """Fit on the training pairs (user, item index arrays)."""

    def fit_on_validation(self, users: np.ndarray, items: np.ndarray,
                          validation: Callable[[], dict] | None) -> tuple[list[dict], int]:
        """`fit`, for a model whose fit is iterative: given `validation` (the model's curve metrics as it stands,
        `valid_hr@10` and `valid_ndcg@10`, as pipeline/ranking/training/result.py measures them), it chooses its number
        of passes there and returns one curve row per pass scored and the pass kept. A solve has no passes to choose:
        the default fits and returns ([], 0)."""
        self.fit(users, items)
        return [], 0

    def candidates(self, users: torch.Tensor,
                   only: Container | None = None) -> Iterator["tuple[Any, torch.Tensor | None] | WeightedSums"]:
        """The settings this model can choose between, simplest first (ties keep the earlier) unless
        `grid_position` orders them, each with its scores for `users` (sorted validation users: (b, n_items)),
        or with None: the model then stands in that setting until the next one is asked for, and the selector ranks
        it as it stands; or a block of settings whose scores are weighted sums of shared parts (`WeightedSums`).
        Lazy, so that a grid shares its expensive parts; nothing yielded when there is nothing to choose (the
        default). `only`: the settings a screened search still scores (select.py); a model should skip computing
        the others, and the selector skips any it offers anyway."""
        return iter(())

    def use_shared_eigen(self, eigen: Any) -> None:
        """Search from this decomposition of the training pairs' Gram (`EigenGram`, made once per prepared data by
        `bertrs gram`) instead of taking one, or from its own again (None). Models whose search decomposes the Gram
        (ease with a lambda grid, dense bert_rs) use it; the default ignores it."""

    def use_search_precision(self, dtype: torch.dtype) -> None:
        """Score the validation grid in this floating-point type (`train.search_precision`); the setting chosen is
        solved in float64 whatever it is. Models whose grid is dense products over the catalogue (dense bert_rs) use
        it; the default ignores it."""

    def candidate_count(self) -> int | None:
        """How many settings `candidates` will offer (the search's progress total), or None when the model cannot
        tell before offering them. None, the default."""
        return None

    def is_plain(self, setting: Any) -> bool:
        """Whether `setting` is the model's plain form (bert_rs: EASE or popularity, no text) rather than an
        addition to it (the guard, `train.guard_additions`, select.py). Every setting, unless the model says
        otherwise."""
        return True

    def simplicity(self, setting: Any) -> Any:
        """The setting's place in the model's order of simplicity, lower is simpler (comparable values, e.g. tuples):
        the "simplest_within_noise" rule keeps the simplest setting within one standard error of the validation
        best (select.py). The default: plain settings (`is_plain`) before the others."""
        return (0,) if self.is_plain(setting) else (1,)

    def grid_position(self, setting: Any) -> Any:
        """Where `setting` stands in the model's order of simplicity, for settings that score the same on validation:
        the lower is kept, whatever order `candidates` offered them in (a grid offers its points in the order that
        shares its expensive parts best, which need not be the simplest first). None, the default: the one offered
        first is kept."""
        return None

    def apply(self, choice: "Choice") -> None:
        """Put the model in `choice.setting` (one that `candidates` offered), chosen on validation with
        `choice.score` after `choice.looks` looks. Only called after `candidates` yielded something."""
        raise NotImplementedError(f"{type(self).__name__} offers candidates but cannot apply one")

    def use_profiles(self, profiles: Any) -> None:
        """Read the users' text from these profiles (pipeline.embeddings.cache.Profiles) from here on: the lagged view
        while choosing, the cache's own for the final fit (pipeline/ranking/training/lagged.py). Text models only."""
        raise NotImplementedError(f"{type(self).__name__} reads no profiles")

    def refit(self, users: np.ndarray, items: np.ndarray, choice: "Choice | None") -> "ClosedFormRanker":
        """Fit on other pairs (training + validation, `train.refit_with_validation`) and stand in the setting
        already chosen on validation: nothing is chosen again."""
        self.fit(users, items)
        if choice is not None:
            self.apply(choice)
        return self


class TrainableRanker(Ranker):
    """A ranker trained by the SGD loop of pipeline/ranking/training/sgd.py through `loss`, the epoch kept chosen on
    validation by select.py's rule."""

    trainable = True

    @abstractmethod
    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """The training objective of one batch: users, pos (b,), sampled negatives neg (b, k) -> scalar."""


@dataclass(frozen=True)
class WeightedSums:
    """A block of candidates whose validation scores are weighted sums of the same parts, in order:
    scores_k = parts[0] * weights[k][0] + parts[1] * weights[k][1] + ..., zero weights skipped, a weight of 1 not
    multiplied. The selector builds them a few users at a time, so the parts stay in cache: at 17k items and 3.7k
    validation users one candidate's full matrix is half a gigabyte, and writing one per candidate made memory
    traffic, not arithmetic, the cost of bert_rs's 2,000-point search."""

    settings: list  # one per candidate, offered in this order
    parts: list  # (b, n_items) tensors, or (1, n_items) rows shared by every user
    weights: list  # one tuple per candidate, a weight per part

    def restricted_to(self, only: Container) -> "WeightedSums":
        """The block with the candidates in `only` alone (the same parts)."""
        kept = [k for k, setting in enumerate(self.settings) if setting in only]
        return WeightedSums([self.settings[k] for k in kept], self.parts, [self.weights[k] for k in kept])

    def scores(self, k: int, cut_parts: list) -> torch.Tensor:
        """Candidate k's scores from `cut_parts`, the parts already cut to the users wanted. (r, n_items)"""
        total = None
        for part, weight in zip(cut_parts, self.weights[k]):
            if weight == 0.0:
                continue
            term = part if weight == 1.0 else weight * part
            total = term if total is None else total + term
        if total is None:
            raise ValueError(f"candidate {self.settings[k]} has no non-zero weight")
        return total
