"""Choosing a model's settings on validation, for every model that has a choice to make: one metric, one rule.

    choice = select(model, data)       # a closed-form model's grid (bert_rs, ease's lambdas, the scalable solver's w)
    best = KeepBest()                  # the neural epoch loop: best.offer(epoch, valid_ndcg) is True on a new best

The metric: every candidate is scored by full-ranking NDCG@10 on the VALIDATION split (the metric every model is
compared on; training pairs and validation positives masked, the test split never read); every candidate scored
counts as one validation look.

The rule (`train.choice_rule`, docs/models.md):

- "simplest_within_noise", the default: the simplest candidate whose validation NDCG@10 is within one standard error
  of the best's, the error taken over validation users from the paired per-user differences between the two (the
  one-standard-error rule of Hastie, Tibshirani and Friedman, ch. 7.10). Simplicity is the model's order
  (`ClosedFormRanker.simplicity`): for bert_rs, no text (plain EASE at any lambda, popularity, or both) first, then
  fewer text parts (side gram, L3AE prior, text match, whitening), then smaller text weights; settings equally
  simple are ranked by score. Why: a setting the data cannot tell from the best by more than validation's own noise
  is no evidence for the text it adds, and how large that noise is depends on how many users validation holds.
- "best": the validation best.

The guard (`train.guard_additions`), on top of either rule. The standard error is that of one comparison; the best of
2,000 settings also wins by the luck of having been picked from 2,000 (the winner's curse), which no single
comparison's error measures. So a model whose grid mixes its plain form with settings that add to it
(`ClosedFormRanker.is_plain`) keeps an addition only when the search's gain over the best plain form holds on users
the search did not see: the validation users are split in two halves (seeded), the best setting and the best plain
setting are chosen on each half, and their difference is measured on the other half; averaged over CROSS_FIT_SPLITS
halvings, the rule's choice stands when that cross-fitted gain is above zero, the best plain setting otherwise.

In every rule the best is the first best: a later candidate must score strictly higher, or the same from a lower
place in the model's tie order (`ClosedFormRanker.grid_position`, for grids computed in another order than their
simplest first).

Screening a large search (`train.screen_search`), successive halving's first round. With at least SCREEN_FROM_USERS
validation users, every candidate is first scored on a seeded SCREEN_SHARE of them; every candidate of the simplest
level goes on to the other users (for bert_rs the plain settings, 19 of 2,161: the rule's usual answer, whose choice
among lambdas a quarter of the users made noisily at the paper's shape), and any other when it is among the top
SCREEN_KEEP of the screen, or the screen's best of its level of simplicity, and its gap to the screen's best is
within SCREEN_Z of its paired standard error there; with the guard on, the screen's best plain setting goes on
whatever its gap. A candidate
scored on all users has the scores it would have had unscreened, up to the rounding of products of another shape
(a few units in the last place of the grid's type, `train.search_precision`), and the rule and the guard choose among those: the guard's halvings then compare the
survivors, which the screen picked on users of both halves. The model computes its grid
for the screened users alone and then only the surviving settings for the rest (`candidates(users, only=...)`),
so the search's big products shrink with the share (docs/scale.md). Below SCREEN_FROM_USERS the whole grid is
scored on every user: the search takes seconds there, and a quarter of a few hundred users is too few to screen on.

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

from pipeline.data.prepared import Interactions, PreparedData
from pipeline.ranking.evaluation.evaluate import full_ranking_mask, model_device, rank_full
from pipeline.ranking.evaluation.metrics import metrics_from_ranks, ndcg_per_positive, rank_against
from pipeline.ranking.protocol import ClosedFormRanker, WeightedSums
from pipeline.ranking.selection.choice import Choice, Setting

SELECTION_METRIC = "ndcg@10"  # on the validation split, full-ranking protocol
CHOICE_RULES = ("simplest_within_noise", "best")
CROSS_FIT_SPLITS = 5  # random halvings of the validation users the guard averages over
SCREEN_FROM_USERS = 2000  # validation users from which a search is screened first
SCREEN_SHARE = 0.25  # of the validation users, scored on every candidate when screening
SCREEN_Z = 3.0  # a candidate further than this many standard errors below the screen's best is not scored further
SCREEN_KEEP = 1 / 8  # at most this share of the candidates goes on, besides the best of each level of simplicity
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
        """`KeepBest.offer`, counting the offers in a row without a new best; True when `setting` is the new best."""
        better = super().offer(setting, score, evidence, position)
        self.stale = 0 if better else self.stale + 1
        return better

    @property
    def spent(self) -> bool:
        """Whether `patience` offers in a row brought no new best: time to stop."""
        return self.stale >= self.patience


def keep_best(scored: Iterable[tuple[Setting, float]]) -> Choice[Setting] | None:
    """The first best of (setting, validation score) pairs, scored lazily when `scored` is a generator."""
    best: KeepBest[Setting] = KeepBest()
    for setting, score in scored:
        best.offer(setting, score)
    return best.choice()


class ValidationLooks:
    """Full-ranking NDCG@10 of many candidates for the same held-out pairs, with the mask built once; `users`: the
    positives of these users only (a screen's share).

    `ndcg(scores)` takes a score matrix for `users` (the held-out users, sorted): the positives' rows and their
    competitor mask (the same mask and pessimistic rank rule as `rank_full`) are built at the first call, so a look
    costs one comparison over (positives x items). `ranks_as_it_stands(model)` ranks a model as it stands with
    `rank_full`, chunked over items, never holding a dense (positives x items) mask.
    """

    def __init__(self, data: PreparedData, split: str = "valid", users: np.ndarray | None = None) -> None:
        heldout = getattr(data, split)
        kept = np.ones(len(heldout), dtype=bool) if users is None else np.isin(heldout.users, users)
        self.positions = np.flatnonzero(kept)  # (p,) these positives' places among all of the split's
        self.heldout = Interactions(heldout.users[kept], heldout.items[kept])
        self.mask = full_ranking_mask(data, split)
        self.users = np.unique(self.heldout.users)  # (b,)
        self.rows = torch.as_tensor(np.searchsorted(self.users, self.heldout.users))  # (p,)
        self.items = torch.as_tensor(self.heldout.items)  # (p,)
        self._competitors: torch.Tensor | None = None  # (p, n_items), built at the first `ndcg`
        self._on_device: tuple[torch.device, tuple[torch.Tensor, ...]] | None = None  # `on`'s copies

    @property
    def competitors(self) -> torch.Tensor:
        """(p, n_items) bool: True where an item competes with the positive of its row (the item is not masked for
        that user); built at the first use."""
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
        """Every candidate of the block ranked as `ranks` would rank its full score matrix (the same sums, in the
        parts' type, the same float32 comparison), built CACHE_ELEMENTS scores at a time: a few users' parts are cut
        once and serve every candidate. (candidates, p)"""
        n_items = sums.parts[0].shape[-1]
        all_rows, all_items, all_competitors = self.on(sums.parts[0].device)
        step = max(1, CACHE_ELEMENTS // max(n_items, 1))
        # finite parts and weights make finite sums: no score to look for NaN in, candidate by candidate (a part's
        # sum is finite only where every entry is, barring an overflow, which takes the checking path)
        finite = (all(math.isfinite(float(part.sum())) for part in sums.parts)
                  and bool(np.isfinite(np.asarray(sums.weights, dtype=np.float64)).all()))
        out = np.empty((len(sums.settings), len(all_rows)), dtype=np.int64)
        for start in range(0, len(all_rows), step):
            chunk = slice(start, start + step)
            rows = all_rows[chunk]
            cut_parts = [part if part.shape[0] == 1 else part[rows] for part in sums.parts]
            positives = torch.arange(len(rows), device=rows.device)
            items, competitors = all_items[chunk], all_competitors[chunk]
            for k in range(len(sums.settings)):
                scores = sums.scores(k, cut_parts).float().expand(len(rows), -1)  # a row part alone: (1, n)
                out[k, chunk] = rank_against(scores[positives, items], scores, competitors, finite).cpu().numpy()
        return out

    def ranked_candidates(self, model: ClosedFormRanker, only: set | None = None) -> Iterator[tuple[Any, np.ndarray]]:
        """(setting, ranks) for every candidate the model offers for these users, in its order; `only`: those
        settings alone (a model may offer more; they are skipped unranked)."""
        users = torch.as_tensor(self.users, device=model_device(model))
        for offered in model.candidates(users) if only is None else model.candidates(users, only=only):
            if isinstance(offered, WeightedSums) and only is not None:
                offered = offered.restricted_to(only)
                if not offered.settings:
                    continue
            elif not isinstance(offered, WeightedSums) and only is not None and offered[0] not in only:
                continue
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


@dataclasses.dataclass(frozen=True)
class Scored:
    """One candidate's validation evidence: each held-out positive's NDCG@10, in the looks' order, and the
    candidate's places in the model's tie order (`grid_position`) and order of simplicity (`simplicity`)."""

    setting: Any
    per_positive: np.ndarray  # (p,) float64
    position: Any
    simplicity: Any

    @property
    def score(self) -> float:
        """The candidate's validation NDCG@10: the mean of `per_positive`."""
        return float(self.per_positive.mean())  # SELECTION_METRIC, as metrics_from_ranks averages it


class HalfBest:
    """The best candidate on each validation half, remembered with its per-positive NDCG@10 (for the other half)."""

    def __init__(self, half: np.ndarray) -> None:
        self.half = half
        self.best = (KeepBest(), KeepBest())

    def offer(self, setting: Any, per_positive: np.ndarray, position: Any = None) -> None:
        """Offer a candidate to each half, scored by the mean of its per-positive NDCG@10 (p,) over that half's
        positives."""
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


def first_best(scored: list[Scored]) -> Scored:
    """The first best of `scored` (in the order offered), ties to the lower grid position."""
    best: KeepBest[Scored] = KeepBest()
    for candidate in scored:
        best.offer(candidate, candidate.score, position=candidate.position)
    return best.setting


def paired_gaps(best: Scored, scored: list[Scored], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each candidate's gap to `best` (the difference of their validation NDCG@10) and its standard error over
    users: a user's difference is the sum over their positives, scaled by users / positives so that the users' mean
    is the gap. rows: each positive's user (0 .. users - 1). -> (c,), (c,)"""
    order = np.argsort(rows, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(rows[order]) != 0])
    n_users = len(starts)
    best_sums = np.add.reduceat(best.per_positive[order], starts)  # (users,)
    per_user = np.empty((len(scored), n_users))  # one candidate at a time: no (c, p) copy
    for k, candidate in enumerate(scored):
        per_user[k] = best_sums - np.add.reduceat(candidate.per_positive[order], starts)
    per_user *= n_users / len(rows)
    errors = per_user.std(axis=1, ddof=1) / math.sqrt(n_users) if n_users > 1 else np.zeros(len(scored))
    return per_user.mean(axis=1), errors


def scored_candidates(model: ClosedFormRanker, looks: ValidationLooks, progress: bool, what: str,
                      only: set | None = None) -> list[Scored]:
    """Every candidate the model offers (`only`: these settings) scored on `looks`' positives, in offered order."""
    total = model.candidate_count() if only is None else len(only)
    ranked = tqdm(looks.ranked_candidates(model, only), total=total, unit=" candidates", mininterval=2.0,
                  desc=f"{what} {type(model).__name__} on validation", disable=not progress)
    return [Scored(setting, ndcg_per_positive(ranks, 10), model.grid_position(setting), model.simplicity(setting))
            for setting, ranks in ranked]


def screened_candidates(model: ClosedFormRanker, data: PreparedData, looks: ValidationLooks, seed: int,
                        progress: bool, keep_plain: bool = False) -> tuple[list[Scored], int]:
    """Every candidate scored on a seeded SCREEN_SHARE of the validation users; every candidate of the simplest level,
    and those within SCREEN_Z standard errors of that screen's best and among the top SCREEN_KEEP of it or the best of
    their level of simplicity (what the rule compares), scored on the other users as well; `keep_plain`: the screen's
    best plain candidate too, whatever its gap (the guard measures the search's gain over it). -> (the survivors scored
    on every user, in offered order; the candidates scored)"""
    rng = np.random.default_rng(seed)
    share = np.sort(rng.choice(looks.users, size=max(2, round(SCREEN_SHARE * len(looks.users))), replace=False))
    on_share = ValidationLooks(data, "valid", users=share)
    screened = scored_candidates(model, on_share, progress, "screening")
    if not screened:
        return [], 0
    gaps, errors = paired_gaps(first_best(screened), screened, on_share.rows.numpy())
    top = {id(c) for c in sorted(screened, key=lambda c: -c.score)[:math.ceil(SCREEN_KEEP * len(screened))]}
    level_best = {id(first_best([c for c in screened if c.simplicity == level]))
                  for level in {c.simplicity for c in screened}}
    simplest = min(c.simplicity for c in screened)  # few settings (bert_rs: the plain ones), the rule's usual answer
    plain = [c for c in screened if model.is_plain(c.setting)] if keep_plain else []
    best_plain = {id(first_best(plain))} if plain else set()
    survivors = [c for c, gap, error in zip(screened, gaps, errors)
                 if c.simplicity == simplest or id(c) in best_plain
                 or (gap <= SCREEN_Z * error and (id(c) in top or id(c) in level_best))]
    rest = ValidationLooks(data, "valid", users=np.setdiff1d(looks.users, share))
    on_rest = {c.setting: c.per_positive for c in scored_candidates(
        model, rest, progress, "choosing", only={c.setting for c in survivors})}
    missing = [c.setting for c in survivors if c.setting not in on_rest]
    if missing:
        raise RuntimeError(f"{type(model).__name__}.candidates(only=...) did not offer {missing[:3]}")
    merged = []
    for candidate in survivors:
        evidence = np.empty(len(looks.heldout))
        evidence[on_share.positions], evidence[rest.positions] = candidate.per_positive, on_rest[candidate.setting]
        merged.append(dataclasses.replace(candidate, per_positive=evidence))
    return merged, len(screened)


def simplest_within_noise(scored: list[Scored], rows: np.ndarray) -> tuple[Scored, Scored, float]:
    """The simplest candidate within one standard error of the first best (equally simple ones: the first best
    of them). -> (kept, best, the standard error of the kept one's gap to the best)"""
    best = first_best(scored)
    gaps, errors = paired_gaps(best, scored, rows)
    eligible = [(c, error) for c, gap, error in zip(scored, gaps, errors) if gap <= error]
    simplest = min(c.simplicity for c, _ in eligible)
    kept = first_best([c for c, _ in eligible if c.simplicity == simplest])
    return kept, best, float(next(error for c, error in eligible if c is kept))


def cross_fitted_gain(model: ClosedFormRanker, scored: list[Scored], looks: ValidationLooks, seed: int,
                      splits: int) -> float | None:
    """The guard's measurement: how much the search's best beats the best plain candidate on the validation half
    it was not chosen on, averaged over `splits` seeded halvings; None where there is nothing to measure (one
    user, no plain candidate, or a plain best)."""
    plain = [c for c in scored if model.is_plain(c.setting)]
    if len(looks.users) < 2 or not plain or model.is_plain(first_best(scored).setting):
        return None
    gains = []
    for half in looks.halves(seed, splits):
        on_halves, plain_on_halves = HalfBest(half), HalfBest(half)
        for candidate in scored:
            for split in (on_halves, plain_on_halves) if model.is_plain(candidate.setting) else (on_halves,):
                split.offer(candidate.setting, candidate.per_positive, candidate.position)
        gains.append(on_halves.cross_fitted_gain_over(plain_on_halves))
    return float(np.mean(gains))


def select(model: ClosedFormRanker, data: PreparedData, rule: str = "simplest_within_noise",
           guard_additions: bool = False, seed: int = 0, splits: int = CROSS_FIT_SPLITS, progress: bool = False,
           screen: bool = True, apply: bool = True) -> Choice[Any] | None:
    """Score the candidates the model offers on validation and keep one by `rule` (see the module docstring).

    Parameters
    ----------
    model
        A closed-form model, fitted on the training pairs; its `candidates` are scored where it lives.
    data
        The prepared data: its validation split is scored, its test split never read.
    rule
        One of CHOICE_RULES: "simplest_within_noise" or "best".
    guard_additions
        Keep the best plain setting instead when the search's gain over it does not survive cross-fitting.
    seed, splits
        The screen's share of the users and the guard's halvings are drawn with `seed`.
    progress
        Show the candidates scored of the total (`model.candidate_count()`), their rate and the time left.
    screen
        Screen the grid on a share of the users first, from SCREEN_FROM_USERS validation users on.
    apply
        Put the model in the chosen setting (`model.apply`); False where a final fit on other pairs will (a solve
        at the paper's size costs a minute, and its weights would never score anything).

    Returns
    -------
    Choice or None
        The choice, applied to the model where `apply`; None (the model untouched) when it offers nothing to choose.
    """
    if rule not in CHOICE_RULES:
        raise ValueError(f"choice rule must be one of {CHOICE_RULES}, got {rule!r}")
    looks = ValidationLooks(data, "valid")
    screened = screen and len(looks.users) >= SCREEN_FROM_USERS
    if screened:
        scored, count = screened_candidates(model, data, looks, seed, progress, keep_plain=guard_additions)
    else:
        scored = scored_candidates(model, looks, progress, "choosing")
        count = len(scored)
    if not scored:
        return None
    best, error = first_best(scored), None
    if rule == "simplest_within_noise":
        kept, best, error = simplest_within_noise(scored, looks.rows.numpy())
    else:
        kept = best
    gain = cross_fitted_gain(model, scored, looks, seed, splits) if guard_additions else None
    if gain is not None and gain <= 0 and not model.is_plain(kept.setting):
        kept, error = first_best([c for c in scored if model.is_plain(c.setting)]), None
    choice = Choice(kept.setting, kept.score, count, cross_fitted_gain=gain, overruled=kept is not best,
                    rule=rule, best_score=best.score, gap_error=error,
                    screened_to=len(scored) if screened else None,
                    hit_rate=float((kept.per_positive > 0).mean()))  # NDCG@10 > 0 exactly where rank < 10
    if apply:
        model.apply(choice)
    return choice
