"""Choosing a model's settings on validation, for every model that has a choice to make: one rule, one metric.

    choice = select(model, data)       # a closed-form model's grid (bert_rs, ease's lambdas, the scalable solver's w)
    best = KeepBest()                  # the neural epoch loop: best.offer(epoch, valid_ndcg) is True on a new best

The rule: every candidate is scored by full-ranking NDCG@10 on the VALIDATION split (the metric every model is
compared on; training pairs and validation positives masked, the test split never read), the first best is kept
(a later candidate must score strictly higher, so models list their simplest candidates first: popularity alone,
text weight 0; a model whose grid is cheapest in another order gives each setting its place in the order of
simplicity instead, `ClosedFormRanker.grid_position`, and ties go to the lower place), and every candidate scored
counts as one validation look.

The guard (`train.guard_additions`). A model whose grid mixes its plain form (bert_rs: EASE at some lambda, or
popularity; no text) with settings that add to it (`ClosedFormRanker.is_plain`) keeps an addition only when the
search's gain over the plain form holds on users the search did not see: the validation users are split in two
halves (seeded), the best setting and the best plain setting are chosen on each half, and their difference is
measured on the other half; averaged over CROSS_FIT_SPLITS such halvings (a single halving's verdict changed with
the seed on Gift Cards), the full-validation best is kept only when that cross-fitted gain is above zero, the best
plain setting otherwise. Why: the best of 1,500 settings scored on a few hundred validation users wins validation by
luck as well as by signal (the winner's curse), and the luck does not carry to test: on Gift Cards the text settings
the search chose beat plain EASE on validation and lost to it on test. Cross-fitting measures that luck instead of
guessing a margin for it (a one-standard-error margin changed none of those choices).

Models only offer candidates and apply the one chosen (`ClosedFormRanker.candidates` / `apply`). A candidate comes
with its validation score matrix when the model can compute a whole grid cheaply from shared parts; as a block of
weighted sums of shared parts (`WeightedSums`: bert_rs's text and popularity weights for one item model), ranked a
few users at a time so that no candidate's full matrix is ever written; or without scores, the model then standing
in that setting while its generator waits, and it is ranked chunked over items (bounded memory on large catalogues,
as `rank_full` does for evaluation).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Generic, Iterable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.data.prepared import PreparedData
from pipeline.ranking.evaluation.evaluate import full_ranking_mask, model_device, rank_full
from pipeline.ranking.evaluation.metrics import metrics_from_ranks, ndcg_per_positive, rank_against
from pipeline.ranking.protocol import ClosedFormRanker, WeightedSums
from pipeline.ranking.selection.choice import Choice, Setting

SELECTION_METRIC = "ndcg@10"  # on the validation split, full-ranking protocol
CROSS_FIT_SPLITS = 5  # random halvings of the validation users the guard averages over
CACHE_ELEMENTS = 2**18  # scores per block when ranking weighted sums: 2 MB per float64 part (measured fastest)


class KeepBest(Generic[Setting]):
    """The first best of candidates offered one at a time: a later one replaces it only by scoring strictly
    higher, or the same from a lower grid position where both have one; the first offered is kept whatever its
    score, until a later one scores a number where it scored NaN."""

    def __init__(self) -> None:
        self.setting: Setting | None = None
        self.score = -math.inf
        self.looks = 0
        self.position: Any = None  # the best's place in the model's order of simplicity, where it has one
        self.evidence: Any = None  # what the best was scored from (select.py: its per-positive NDCG)

    def offer(self, setting: Setting, score: float, evidence: Any = None, position: Any = None) -> bool:
        """Count the look; True when `setting` is the new best."""
        self.looks += 1
        simpler_tie = (score == self.score and position is not None and self.position is not None
                       and position < self.position)
        if self.looks == 1 or score > self.score or simpler_tie or math.isnan(self.score):  # NaN never stays
            self.setting, self.score, self.evidence, self.position = setting, score, evidence, position
            return True
        return False

    def choice(self) -> Choice[Setting] | None:
        """The kept candidate, or None when nothing was offered."""
        return Choice(self.setting, self.score, self.looks) if self.looks else None


class EarlyStop(KeepBest[int]):
    """KeepBest over training epochs (or passes) that also says when to stop: after `patience` offered in a row
    without a new best. One rule for the neural heads' epochs and the scalable solver's passes."""

    def __init__(self, patience: int) -> None:
        super().__init__()
        self.patience, self.stale = patience, 0

    def offer(self, setting: int, score: float, evidence: Any = None, position: Any = None) -> bool:
        better = super().offer(setting, score, evidence, position)
        self.stale = 0 if better else self.stale + 1
        return better

    @property
    def spent(self) -> bool:
        return self.stale >= self.patience


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
    costs one comparison over (positives x items). `ranks_as_it_stands(model)` ranks a model as it stands with
    `rank_full`, chunked over items, never holding a dense (positives x items) mask.
    """

    def __init__(self, data: PreparedData, split: str = "valid") -> None:
        self.heldout = getattr(data, split)
        self.mask = full_ranking_mask(data, split)
        self.users = np.unique(self.heldout.users)  # (b,)
        self.rows = torch.as_tensor(np.searchsorted(self.users, self.heldout.users))  # (p,)
        self.items = torch.as_tensor(self.heldout.items)  # (p,)
        self._competitors: torch.Tensor | None = None  # (p, n_items), built at the first `ndcg`
        self._on_device: tuple[torch.device, tuple[torch.Tensor, ...]] | None = None  # `on`'s copies

    @property
    def competitors(self) -> torch.Tensor:
        if self._competitors is None:
            self._competitors = ~self.mask.dense_mask(self.users)[self.rows]
        return self._competitors

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, items, competitors) where the scores are: the positives' rows and items (p,) and the competitor
        mask (p, n_items), built once per device (a model fitted on a GPU is ranked there)."""
        if device.type == "cpu":
            return self.rows, self.items, self.competitors
        if self._on_device is None or self._on_device[0] != device:
            self._on_device = (device, tuple(t.to(device) for t in (self.rows, self.items, self.competitors)))
        return self._on_device[1]

    def ndcg(self, scores: torch.Tensor) -> float:
        """scores: (b, n_items) rows for `self.users`."""
        return metrics_from_ranks(self.ranks(scores), [10])[SELECTION_METRIC]

    def ranks(self, scores: torch.Tensor) -> np.ndarray:
        """Each held-out positive's rank among its competitors. scores: (b, n_items) rows for `self.users`."""
        rows, items, competitors = self.on(scores.device)
        scores = scores.float()[rows]
        positives = torch.arange(len(rows), device=scores.device)
        return rank_against(scores[positives, items], scores, competitors).cpu().numpy()

    def ranks_of_sums(self, sums: WeightedSums) -> np.ndarray:
        """Every candidate of the block ranked as `ranks` would rank its full score matrix (the same float64 sums,
        the same float32 comparison), built CACHE_ELEMENTS scores at a time: a few users' parts are cut once and
        serve every candidate. (candidates, p)"""
        n_items = sums.parts[0].shape[-1]
        all_rows, all_items, all_competitors = self.on(sums.parts[0].device)
        step = max(1, CACHE_ELEMENTS // max(n_items, 1))
        out = np.empty((len(sums.settings), len(all_rows)), dtype=np.int64)
        for start in range(0, len(all_rows), step):
            chunk = slice(start, start + step)
            rows = all_rows[chunk]
            cut_parts = [part if part.shape[0] == 1 else part[rows] for part in sums.parts]
            positives = torch.arange(len(rows), device=rows.device)
            items, competitors = all_items[chunk], all_competitors[chunk]
            for k in range(len(sums.settings)):
                scores = sums.scores(k, cut_parts).float().expand(len(rows), -1)  # a row part alone: (1, n)
                out[k, chunk] = rank_against(scores[positives, items], scores, competitors).cpu().numpy()
        return out

    def ranked_candidates(self, model: ClosedFormRanker, users: torch.Tensor) -> Iterator[tuple[Any, np.ndarray]]:
        """(setting, ranks) for every candidate the model offers, in its order."""
        for offered in model.candidates(users):
            yield from self.ranked(offered, model)

    def ranked(self, offered, model: torch.nn.Module) -> Iterator[tuple[Any, np.ndarray]]:
        """(setting, ranks) for what `model.candidates` yielded: one setting with its scores, one to rank as the
        model stands (scores None), or a block of weighted sums."""
        if isinstance(offered, WeightedSums):
            yield from zip(offered.settings, self.ranks_of_sums(offered))
            return
        setting, scores = offered
        yield setting, (self.ranks(scores) if scores is not None else self.ranks_as_it_stands(model))

    def ranks_as_it_stands(self, model: torch.nn.Module) -> np.ndarray:
        """The model as it stands, ranked chunked over items by `rank_full` (same order as `ranks`)."""
        return rank_full(model, self.heldout, self.mask).ranks

    def halves(self, seed: int, splits: int = 1) -> np.ndarray:
        """`splits` seeded halvings of the held-out users, as each positive's half (0 or 1) in each: a user's
        positives stay together. (splits, p)"""
        rng = np.random.default_rng(seed)
        half_of_user = np.stack([rng.permutation(len(self.users)) % 2 for _ in range(splits)])
        return half_of_user[:, self.rows.numpy()]


class HalfBest:
    """The best candidate on each validation half, remembered with its per-positive NDCG@10 (for the other half)."""

    def __init__(self, half: np.ndarray) -> None:
        self.half = half
        self.best = (KeepBest(), KeepBest())

    def offer(self, setting: Any, per_positive: np.ndarray, position: Any = None) -> None:
        for h in (0, 1):
            self.best[h].offer(setting, float(per_positive[self.half == h].mean()), per_positive, position)

    def on_other_half(self, h: int) -> float:
        """NDCG@10 of the candidate chosen on half h, measured on the other half."""
        return float(self.best[h].evidence[self.half != h].mean())

    def cross_fitted_gain_over(self, plain: "HalfBest") -> float:
        """How much the candidates chosen here beat those chosen by `plain` on the half neither was chosen on,
        each half's measurement weighted by its positives."""
        share = [float((self.half != h).mean()) for h in (0, 1)]
        return sum(share[h] * (self.on_other_half(h) - plain.on_other_half(h)) for h in (0, 1))


def select(model: ClosedFormRanker, data: PreparedData, guard_additions: bool = False, seed: int = 0,
           splits: int = CROSS_FIT_SPLITS, progress: bool = False) -> Choice[Any] | None:
    """Score every candidate the model offers on validation and keep the first best (see the module docstring).

    Parameters
    ----------
    model
        A closed-form model, fitted on the training pairs; its `candidates` are scored where it lives.
    data
        The prepared data: its validation split is scored, its test split never read.
    guard_additions
        Keep the best plain setting instead when the best's gain does not survive cross-fitting.
    seed, splits
        The halvings of the validation users the guard averages over.
    progress
        Show the candidates scored of the total (`model.candidate_count()`), their rate and the time left.

    Returns
    -------
    Choice or None
        The choice, already applied to the model; None (the model untouched) when it offers nothing to choose.
    """
    looks = ValidationLooks(data, "valid")
    users = torch.as_tensor(looks.users, device=model_device(model))
    best: KeepBest[Any] = KeepBest()
    best_plain: KeepBest[Any] = KeepBest()
    guard = guard_additions and len(looks.users) >= 2
    halvings = looks.halves(seed, splits) if guard else []
    on_halves, plain_on_halves = [HalfBest(half) for half in halvings], [HalfBest(half) for half in halvings]
    scored = tqdm(looks.ranked_candidates(model, users), total=model.candidate_count(), unit=" candidates",
                  desc=f"choosing {type(model).__name__} on validation", disable=not progress, mininterval=2.0)
    for setting, ranks in scored:
        per_positive = ndcg_per_positive(ranks, 10)
        score = float(per_positive.mean())  # SELECTION_METRIC, as metrics_from_ranks averages it
        position = model.grid_position(setting)
        best.offer(setting, score, position=position)
        is_plain = model.is_plain(setting)
        if is_plain:
            best_plain.offer(setting, score, position=position)
        if guard:
            for split in on_halves + (plain_on_halves if is_plain else []):
                split.offer(setting, per_positive, position)
    choice = best.choice()
    if choice is None:
        return None
    if guard and best_plain.looks and not model.is_plain(choice.setting):
        gain = float(np.mean([chosen.cross_fitted_gain_over(plain) for chosen, plain in zip(on_halves, plain_on_halves)]))
        kept = choice if gain > 0 else Choice(best_plain.setting, best_plain.score, choice.looks, overruled=True)
        choice = dataclasses.replace(kept, cross_fitted_gain=gain)
    model.apply(choice)
    return choice
