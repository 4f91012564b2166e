"""Choosing a model's settings on validation, for every model that has a choice to make: one rule, one metric.

    choice = select(model, data)       # a closed-form model's grid (bert_rs, ease's lambdas, the scalable solver's w)
    best = KeepBest()                  # the neural epoch loop: best.offer(epoch, valid_ndcg) is True on a new best

The rule: every candidate is scored by full-ranking NDCG@10 on the VALIDATION split (the metric every model is
compared on; training pairs and validation positives masked, the test split never read), the first best is kept
(a later candidate must score strictly higher, so models list their simplest candidates first: popularity alone,
text weight 0), and every candidate scored counts as one validation look.

Models only offer candidates and apply the one chosen (`ClosedFormRanker.candidates` / `apply`). A candidate comes
with its validation score matrix when the model can compute a whole grid cheaply from shared parts (bert_rs: one
eigendecomposition per (whitening, side weight) serves every lambda and text weight, yielded lazily), or without
one, the model then standing in that setting while its generator waits, and it is ranked chunked over items
(bounded memory on large catalogues, as `rank_full` does for evaluation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Generic, Iterable, TypeVar

import numpy as np
import torch

from pipeline.data.prepared import PreparedData
from pipeline.ranking.evaluate import full_ranking_mask, model_device, rank_full
from pipeline.ranking.metrics import metrics_from_ranks, rank_against
from pipeline.ranking.protocol import ClosedFormRanker

SELECTION_METRIC = "ndcg@10"  # on the validation split, full-ranking protocol

Setting = TypeVar("Setting")


@dataclass(frozen=True)
class Choice(Generic[Setting]):
    setting: Setting  # the candidate kept
    score: float  # its validation full-ranking NDCG@10
    looks: int  # candidates scored to choose it


class KeepBest(Generic[Setting]):
    """The first best of candidates offered one at a time: a later one replaces it only by scoring strictly
    higher; the first offered is kept whatever its score, until a later one scores a number where it scored NaN."""

    def __init__(self) -> None:
        self.setting: Setting | None = None
        self.score = -math.inf
        self.looks = 0

    def offer(self, setting: Setting, score: float) -> bool:
        """Count the look; True when `setting` is the new best."""
        self.looks += 1
        if self.looks == 1 or score > self.score or math.isnan(self.score):  # NaN (a diverged epoch) never stays
            self.setting, self.score = setting, score
            return True
        return False

    def choice(self) -> Choice[Setting] | None:
        """The kept candidate, or None when nothing was offered."""
        return Choice(self.setting, self.score, self.looks) if self.looks else None


def keep_best(scored: Iterable[tuple[Setting, float]]) -> Choice[Setting] | None:
    """The first best of (setting, validation score) pairs, scored lazily when `scored` is a generator."""
    best: KeepBest[Setting] = KeepBest()
    for setting, score in scored:
        best.offer(setting, score)
    return best.choice()


class ValidationLooks:
    """Full-ranking NDCG@10 of many candidates for the same held-out pairs, with the mask built once.

    `ndcg(scores)` takes a score matrix for `users` (the held-out users, sorted): the positives' rows and their
    competitor mask (the same mask and pessimistic rank rule as `rank_full`) are built at the first call, so a look
    costs one comparison over (positives x items). `ndcg_ranked(model)` ranks a model as it stands with `rank_full`,
    chunked over items, never holding a dense (positives x items) mask.
    """

    def __init__(self, data: PreparedData, split: str = "valid") -> None:
        self.heldout = getattr(data, split)
        self.mask = full_ranking_mask(data, split)
        self.users = np.unique(self.heldout.users)  # (b,)
        self.rows = torch.as_tensor(np.searchsorted(self.users, self.heldout.users))  # (p,)
        self.items = torch.as_tensor(self.heldout.items)  # (p,)
        self._competitors: torch.Tensor | None = None  # (p, n_items), built at the first `ndcg`

    @property
    def competitors(self) -> torch.Tensor:
        if self._competitors is None:
            self._competitors = ~self.mask.dense_mask(self.users)[self.rows]
        return self._competitors

    def ndcg(self, scores: torch.Tensor) -> float:
        """scores: (b, n_items) rows for `self.users`."""
        scores = scores.float()[self.rows]
        ranks = rank_against(scores[torch.arange(len(self.rows)), self.items], scores, self.competitors)
        return metrics_from_ranks(ranks.numpy(), [10])[SELECTION_METRIC]

    def ndcg_ranked(self, model: torch.nn.Module) -> float:
        """The model as it stands, ranked chunked over items by `rank_full`."""
        return metrics_from_ranks(rank_full(model, self.heldout, self.mask).ranks, [10])[SELECTION_METRIC]


def select(model: ClosedFormRanker, data: PreparedData) -> Choice[Any] | None:
    """Score every candidate the model offers on validation, keep the first best and apply it to the model.
    None (the model untouched) when it offers nothing to choose between."""
    looks = ValidationLooks(data, "valid")
    users = torch.as_tensor(looks.users, device=model_device(model))
    best: KeepBest[Any] = KeepBest()
    for setting, scores in model.candidates(users):
        best.offer(setting, looks.ndcg(scores) if scores is not None else looks.ndcg_ranked(model))
    choice = best.choice()
    if choice is not None:
        model.apply(choice)
    return choice
