"""Choosing settings on validation (pipeline/ranking/selection/select.py): the first best candidate is kept (ties go to
the earlier, or to the lower grid position where the model gives one), every candidate scored is one look, both ways of
scoring a candidate agree, and what each model with a grid picks on the planted world is pinned, so that a selection
that keeps the wrong candidate, drops one or scores another metric fails here.

The pinned values were recorded by training through `train()` before selection moved out of the models; in every
grid the winner is neither the first nor (except EASE's) the last candidate, so keeping the first, the last or an
arbitrary one is caught. A change of one rank among 400 validation users moves NDCG@10 by more than 1e-4.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch

import pipeline.ranking.models.review_ease as review_ease
from pipeline.ranking.models import baselines
from pipeline.config import RunSpec
import pipeline.ranking.selection.select as select_module
from pipeline.ranking.protocol import ClosedFormRanker, WeightedSums
from pipeline.ranking.evaluation.metrics import ndcg_per_positive
from pipeline.ranking.selection.choice import Choice
from pipeline.ranking.selection.select import HalfBest, KeepBest, ValidationLooks, keep_best, select
from pipeline.ranking.training.train import train
from pipeline.ranking.selection.spaces import ReviewAwareSpace
from tests.ranking_fixtures import in_memory_data, tiny_profiles

pytestmark = pytest.mark.usefixtures("torch_single_thread")

BERT_RS = RunSpec(model="bert_rs", embeddings="synthetic")


# ------------------------------------------------------------------------------------------- the rule


def test_the_first_best_is_kept_and_every_candidate_scored_is_a_look():
    assert keep_best([("a", 0.2), ("b", 0.5), ("c", 0.5), ("d", 0.4)]) == Choice("b", 0.5, 4)
    assert keep_best([("c", 0.5), ("b", 0.5)]) == Choice("c", 0.5, 2)
    assert keep_best([("only", -math.inf)]) == Choice("only", -math.inf, 1)  # one candidate is always kept
    assert keep_best([]) is None


def test_a_tie_goes_to_the_lower_grid_position_whatever_the_order_it_was_offered_in():
    best = KeepBest()
    assert best.offer("complex", 0.5, position=(1, 0)) and best.offer("simple", 0.5, position=(0, 3))
    assert not best.offer("simpler but worse", 0.4, position=(0, 0))
    assert not best.offer("complex again", 0.5, position=(1, 0))
    assert best.choice() == Choice("simple", 0.5, 4)
    unplaced = KeepBest()  # without positions the first offered keeps a tie
    assert unplaced.offer("first", 0.5) and not unplaced.offer("second", 0.5)


def test_a_candidate_that_scored_nan_gives_way_to_the_next_real_score():
    # a diverged first epoch must not freeze the choice: nothing compares greater than NaN
    assert keep_best([("diverged", math.nan), ("b", 0.1), ("c", 0.3), ("d", 0.2)]) == Choice("c", 0.3, 4)


N_USERS, N_ITEMS = 4, 6
# every user has item 0 in training (masked) and item u + 1 in validation, so 4 items compete with each positive
WORLD = in_memory_data(N_USERS, N_ITEMS, ([0, 1, 2, 3], [0, 0, 0, 0]), ([0, 1, 2, 3], [1, 2, 3, 4]),
                       ([0, 1, 2, 3], [5, 5, 5, 1]))
POSITIVES = torch.zeros(N_USERS, N_ITEMS).index_put_((torch.arange(4), torch.tensor([1, 2, 3, 4])), torch.tensor(1.0))
BELOW_ALL = 1 / math.log2(4 + 2)  # NDCG@10 of a positive ranked under its 4 competitors


class Offers(ClosedFormRanker):
    """Candidates given as whole score matrices; `as_it_stands` offers them the way a large model does (no scores,
    the model switched to the setting instead). Remembers what it was asked to apply."""

    def __init__(self, offers: list[tuple[str, torch.Tensor]], as_it_stands: bool = False) -> None:
        super().__init__()
        self.offers, self.as_it_stands, self.applied = offers, as_it_stands, []
        self.current = torch.zeros(N_USERS, N_ITEMS)

    def fit(self, users, items):
        return self

    def candidates(self, users):
        for setting, scores in self.offers:
            if self.as_it_stands:
                self.current = scores
                yield setting, None
            else:
                yield setting, scores[users]

    def apply(self, choice):
        self.applied.append(choice)
        self.current = dict(self.offers)[choice.setting]

    def score_all(self, users):
        return self.current[users]

    def score(self, users, items):
        return self.current[users, items]

    def score_parts(self, users, items):
        return {"offer": self.score(users, items)}


OFFERS = [("misses", -POSITIVES), ("half", POSITIVES * torch.tensor([[1.0], [1.0], [-1.0], [-1.0]])),
          ("hits", POSITIVES), ("hits too", 2 * POSITIVES), ("misses too", -POSITIVES)]


@pytest.mark.parametrize("as_it_stands", [False, True], ids=["score matrices", "ranked as it stands"])
def test_select_scores_every_offer_on_validation_and_applies_the_first_best(as_it_stands):
    model = Offers(OFFERS, as_it_stands)
    choice = select(model, WORLD, rule="best")
    assert kept(choice) == ("hits", 1.0, len(OFFERS)) and model.applied == [choice]
    torch.testing.assert_close(model.current, POSITIVES)
    reordered = Offers([OFFERS[3], OFFERS[2], OFFERS[0]], as_it_stands)
    assert kept(select(reordered, WORLD, rule="best")) == ("hits too", 1.0, 3)  # ties go to the earlier
    assert kept(select(Offers([OFFERS[0], OFFERS[1]], as_it_stands), WORLD, rule="best")) == (
        "half", pytest.approx((2 * 1.0 + 2 * BELOW_ALL) / 4), 2)


def kept(choice: Choice) -> tuple:
    """What a choice kept: (setting, validation NDCG@10, looks)."""
    return choice.setting, choice.score, choice.looks


def test_a_block_of_weighted_sums_ranks_a_few_users_at_a_time_exactly_as_its_full_score_matrices(monkeypatch):
    """Users with two validation positives, masked training items, a row part shared by every user, a NaN score and
    blocks far smaller than the user count: every candidate's ranks equal those of its full matrix."""
    rng = np.random.default_rng(3)
    n_users, n_items = 13, 9
    valid_users = np.r_[np.arange(n_users), [2, 7, 11]]  # three users hold two positives
    valid_items = rng.integers(0, n_items, len(valid_users))
    train_users = rng.integers(0, n_users, 30)
    train_items = rng.integers(0, n_items, 30)
    keep = ~np.isin(train_users * n_items + train_items, valid_users * n_items + valid_items)
    data = in_memory_data(n_users, n_items, (train_users[keep], train_items[keep]), (valid_users, valid_items),
                          (np.arange(n_users), np.zeros(n_users, int)))
    looks = ValidationLooks(data)
    parts = [torch.tensor(rng.normal(size=(n_users, n_items))), torch.tensor(rng.normal(size=(n_users, n_items))),
             torch.tensor(rng.normal(size=(1, n_items)))]
    parts[1][4, 3] = float("nan")
    weights = [(1.0, 0.0, 0.0), (1.0, 0.5, 0.0), (1.0, 0.0, 2.0), (1.0, 0.25, 1.0), (0.0, 0.0, 1.0)]
    sums = WeightedSums(list(range(len(weights))), parts, weights)
    monkeypatch.setattr(select_module, "CACHE_ELEMENTS", 2 * n_items)  # two users' scores at a time
    blocked = looks.ranks_of_sums(sums)
    for k, weight in enumerate(weights):
        full = sum(w * part for w, part in zip(weight, parts) if w).expand(n_users, -1)  # zero weights: no NaN * 0
        np.testing.assert_array_equal(blocked[k], looks.ranks(full))
    assert blocked.min() < blocked.max()  # not a world where every rank is the same


def test_a_model_offering_nothing_is_left_as_it_is():
    model = Offers([])
    assert select(model, WORLD) is None and model.applied == []


def test_bert_rs_offers_its_whole_grid_from_one_eigendecomposition(monkeypatch):
    """X^T X is decomposed once; every whitening and side weight is folded in from it (Woodbury), never decomposed
    again: at 17k items each decomposition took minutes."""
    decomposed = []

    class Counted(review_ease.EigenGram):
        def __init__(self, gram):
            decomposed.append(gram.shape)
            super().__init__(gram)

    monkeypatch.setattr(baselines, "EigenGram", Counted)  # where the search's decomposition is taken
    rng = np.random.default_rng(0)
    x = rng.random((7, 11)) < 0.4
    data = in_memory_data(7, 11, np.nonzero(x), (np.arange(7), [int(np.flatnonzero(~r)[0]) for r in x]),
                          (np.arange(7), [int(np.flatnonzero(~r)[-1]) for r in x]))
    model = review_ease.ReviewAwareEASE(7, 11, tiny_profiles(),
                                        ReviewAwareSpace(lambdas=[1.0, 10.0, 100.0], side_weights=[0.0, 1.0, 4.0],
                                                         matches=["user_profile"], text_weights=[0.0, 0.5],
                                                         whitening=[False, True]))
    choice = select(model.fit(*np.nonzero(x)), data)
    assert decomposed == [(11, 11)]
    assert choice.looks == model.choices()["validation_looks"] == 2 * 3 * 3 * 2


def bert_rs_world(seed: int):
    """7 users x 11 items, one validation and one test positive each; so few positives that many settings tie."""
    rng = np.random.default_rng(seed)
    x = rng.random((7, 11)) < 0.4
    data = in_memory_data(7, 11, np.nonzero(x), (np.arange(7), [int(np.flatnonzero(~r)[0]) for r in x]),
                          (np.arange(7), [int(np.flatnonzero(~r)[-1]) for r in x]))
    model = review_ease.ReviewAwareEASE(7, 11, tiny_profiles(seed),
                                        ReviewAwareSpace(lambdas=[1.0, 10.0, 100.0], side_weights=[0.0, 1.0, 4.0],
                                                         matches=["item_neighbours", "user_profile"],
                                                         text_weights=[0.0, 0.5], regularisers=["ease", "l3ae"],
                                                         whitening=[False, True], pop_weights=[0.0, 1.0]))
    return data, model.fit(*np.nonzero(x))


def test_bert_rs_computes_the_big_product_once_per_lambda(monkeypatch):
    """x (X^T X + lambda I)^-1, a (users x items) x (items x items) product, is shared by every whitening, side
    weight and regulariser at that lambda: computed for each of them it was two thirds of the search at 17k items."""
    products = []
    times_inverse = review_ease.EigenGram.times_inverse
    monkeypatch.setattr(review_ease.EigenGram, "times_inverse", lambda self, rows, lam: products.append(lam) or
                        times_inverse(self, rows, lam))
    data, model = bert_rs_world(seed=9)
    choice = select(model, data)
    assert products == [1.0, 10.0, 100.0]
    assert choice.looks == 1 + 2 * 3 * 3 * 2 * (1 + 2) * 2  # popularity alone; w = 0 once, w = 0.5 per match; 2 p


def test_bert_rs_breaks_ties_by_its_order_of_simplicity_not_by_the_order_it_computes_in():
    """The grid is computed lambda first (its expensive product is per lambda) but chosen as if offered whitening,
    side weight, lambda, regulariser, match, w, p: the first best in that nested order, as before the reordering,
    so that sharing the product moved no choice. This world has a tie that the computing order would settle the
    other way."""
    data, model = bert_rs_world(seed=9)
    looks = ValidationLooks(data)
    scored = [(setting, float(ndcg_per_positive(ranks, 10).mean()))
              for setting, ranks in looks.ranked_candidates(model)]
    simplest_first = [review_ease.Setting(False, 0.0, 1.0, "ease", "item_neighbours", 0.0, 1.0, 0.0)] + [
        review_ease.Setting(whiten, side, lam, reg, match, w, p, 1.0)
        for whiten in (False, True) for side in (0.0, 1.0, 4.0) for lam in (1.0, 10.0, 100.0)
        for reg in ("ease", "l3ae") for match in ("item_neighbours", "user_profile") for w in (0.0, 0.5)
        for p in (0.0, 1.0) if w or match == "item_neighbours"]
    in_grid_order = sorted(scored, key=lambda offered: model.grid_position(offered[0]))
    assert [setting for setting, _ in in_grid_order] == simplest_first
    nested_first_best = keep_best(in_grid_order).setting
    assert keep_best(scored).setting != nested_first_best  # the tie this world holds
    assert select(model, data, rule="best").setting == nested_first_best


# ------------------------------------------------------------------------------------------- the guard
# 40 users, each with item 0 in training and one validation positive: 10 competitors per positive. A candidate is
# given as the rank of each user's positive, so its per-user NDCG@10 is exact.
GUARD_USERS, GUARD_ITEMS = 40, 12
GUARD_WORLD = in_memory_data(GUARD_USERS, GUARD_ITEMS, (range(GUARD_USERS), [0] * GUARD_USERS),
                             (range(GUARD_USERS), [1 + u % 11 for u in range(GUARD_USERS)]),
                             (range(GUARD_USERS), [1 + (u + 1) % 11 for u in range(GUARD_USERS)]))
HALF = ValidationLooks(GUARD_WORLD).halves(seed=7)[0]  # each user's half in one halving (one positive per user)


def ranked_at(ranks) -> torch.Tensor:
    """Scores that put user u's validation positive below exactly ranks[u] of its competitors."""
    scores = torch.zeros(GUARD_USERS, GUARD_ITEMS)
    for u, rank in enumerate(ranks):
        positive = 1 + u % 11
        competitors = [i for i in range(1, GUARD_ITEMS) if i != positive]
        scores[u, competitors] = torch.arange(len(competitors), 0, -1, dtype=torch.float32)  # 10 .. 1
        scores[u, positive] = len(competitors) - rank + 0.5
    return scores


def ndcg(rank: int) -> float:
    return 1 / math.log2(rank + 2)


class GuardOffers(ClosedFormRanker):
    """Named candidates, "plain ..." ones the model's plain form; remembers what it applied. `as_it_stands`
    offers them the way a large model does (no scores: the model stands in the setting while it is ranked)."""

    def __init__(self, offers: dict[str, torch.Tensor], as_it_stands: bool = False) -> None:
        super().__init__()
        self.offers, self.applied, self.as_it_stands = offers, None, as_it_stands
        self.asked_for = []  # the `only` of each call to `candidates`

    def fit(self, users, items):
        return self

    def candidates(self, users, only=None):
        self.asked_for.append(only)
        for setting, scores in self.offers.items():
            if only is not None and setting not in only:
                continue
            self.applied = setting
            yield setting, None if self.as_it_stands else scores[users]

    def is_plain(self, setting):
        return setting.startswith("plain")

    def apply(self, choice):
        self.applied = choice.setting

    def score_all(self, users):
        return self.offers[self.applied][users]

    def score(self, users, items):
        return self.score_all(users)[torch.arange(len(users)), items]

    def score_parts(self, users, items):
        return {"offer": self.score(users, items)}


PLAIN = ranked_at([3] * GUARD_USERS)
PLAIN_SCORE = ndcg(3)
LUCKY_ON_HALF = {h: ranked_at([0 if HALF[u] == h else 5 for u in range(GUARD_USERS)]) for h in (0, 1)}


@pytest.mark.parametrize("as_it_stands", [False, True], ids=["score matrices", "ranked as it stands"])
def test_an_addition_whose_win_does_not_hold_on_the_other_half_gives_way_to_the_best_plain_setting(as_it_stands):
    # one halving: each "lucky" addition ranks its own half's positives first and the other half's sixth; it beats
    # the plain setting on the whole validation set (mean of 1 and 0.356 > 0.431), yet the one chosen on either half
    # loses to the plain setting on the other
    offers = {"plain lambda 10": ranked_at([6] * GUARD_USERS), "plain lambda 100": PLAIN,
              "lucky on half 0": LUCKY_ON_HALF[0], "lucky on half 1": LUCKY_ON_HALF[1]}
    model = GuardOffers(offers, as_it_stands)
    choice = select(model, GUARD_WORLD, guard_additions=True, rule="best", seed=7, splits=1)
    assert model.applied == choice.setting == "plain lambda 100"
    assert choice.overruled and choice.looks == 4 and choice.score == pytest.approx(ndcg(3))
    assert choice.cross_fitted_gain == pytest.approx(ndcg(5) - ndcg(3))
    unguarded = select(GuardOffers(offers), GUARD_WORLD, rule="best")
    assert unguarded.setting == "lucky on half 0" and unguarded.cross_fitted_gain is None


def test_the_winner_of_many_noisy_additions_gives_way_to_the_plain_setting():
    # the winner's curse: 40 additions, each ranking every positive first (NDCG 1) with probability 0.16 and ninth
    # (0.29) otherwise, average 0.40 against the plain setting's 0.43; the luckiest wins validation all the same
    rng = np.random.default_rng(0)
    noise = {f"noisy {k}": ranked_at(np.where(rng.random(GUARD_USERS) < 0.16, 0, 8)) for k in range(40)}
    offers = {"plain": PLAIN, **noise}
    unguarded = select(GuardOffers(offers), GUARD_WORLD, rule="best")
    assert unguarded.setting.startswith("noisy") and unguarded.score > ndcg(3)
    guarded = select(GuardOffers(offers), GUARD_WORLD, guard_additions=True, rule="best", seed=0)
    assert guarded.setting == "plain" and guarded.overruled and guarded.cross_fitted_gain < 0


def test_an_addition_that_helps_both_halves_is_kept_by_the_guard():
    offers = {"plain": PLAIN, "helps everyone": ranked_at([1] * GUARD_USERS)}
    choice = select(GuardOffers(offers), GUARD_WORLD, guard_additions=True, rule="best", seed=7)
    assert choice.setting == "helps everyone" and not choice.overruled
    assert choice.cross_fitted_gain == pytest.approx(ndcg(1) - ndcg(3))


def test_the_guard_leaves_a_plain_winner_a_grid_without_plain_settings_and_an_all_plain_grid_alone():
    plain_wins = {"plain": ranked_at([0] * GUARD_USERS), "lucky on half 0": LUCKY_ON_HALF[0]}
    assert kept(select(GuardOffers(plain_wins), GUARD_WORLD, guard_additions=True, rule="best")) == ("plain", 1.0, 2)
    no_plain = {"lucky on half 0": LUCKY_ON_HALF[0], "lucky on half 1": LUCKY_ON_HALF[1]}
    assert select(GuardOffers(no_plain), GUARD_WORLD, guard_additions=True, rule="best").setting == "lucky on half 0"
    all_plain = {"plain lambda 10": ranked_at([6] * GUARD_USERS), "plain lambda 100": PLAIN}
    assert (kept(select(GuardOffers(all_plain), GUARD_WORLD, guard_additions=True, rule="best"))
            == ("plain lambda 100", ndcg(3), 2))


def test_with_one_validation_user_there_is_nothing_to_halve_and_the_best_is_kept():
    one_user = in_memory_data(GUARD_USERS, GUARD_ITEMS, (range(GUARD_USERS), [0] * GUARD_USERS), ([0], [1]), ([0], [2]))
    offers = {"plain": PLAIN, "lucky on half 0": LUCKY_ON_HALF[0]}
    choice = select(GuardOffers(offers), one_user, guard_additions=True, rule="best")
    assert choice.setting == "lucky on half 0" and choice.cross_fitted_gain is None


def test_the_cross_fitted_gain_weights_each_half_by_its_positives():
    # 3 positives in half 0, 2 in half 1. "a" wins half 0 and scores 0.2 on half 1; "b" wins half 1 and scores 0.9
    # on half 0; the plain setting scores 0.5 everywhere: gain = 2/5 (0.2 - 0.5) + 3/5 (0.9 - 0.5) = 0.12, the
    # per-positive mean of the two measurements (equal weights would give 0.05)
    half = np.array([0, 0, 0, 1, 1])
    chosen, plain = HalfBest(half), HalfBest(half)
    chosen.offer("a", np.array([1.0, 1.0, 1.0, 0.2, 0.2]))
    chosen.offer("b", np.array([0.9, 0.9, 0.9, 1.0, 1.0]))
    plain.offer("plain", np.full(5, 0.5))
    assert chosen.cross_fitted_gain_over(plain) == pytest.approx(2 / 5 * (0.2 - 0.5) + 3 / 5 * (0.9 - 0.5))


def test_the_halves_split_users_not_positives_and_follow_the_seed():
    # two validation positives per user: a user's luck is shared by both, so both sit in the same half
    data = in_memory_data(10, 12, (range(10), [0] * 10), ([u for u in range(10) for _ in (0, 1)], [1, 2] * 10),
                          (range(10), [3] * 10))
    looks = ValidationLooks(data)
    halvings = looks.halves(seed=0, splits=3)
    for half in halvings:
        assert np.array_equal(half[0::2], half[1::2]) and half[0::2].sum() == 5
    assert not np.array_equal(halvings[0], halvings[1])  # each halving is drawn afresh
    assert np.array_equal(looks.halves(seed=0, splits=3), halvings)
    assert not all(np.array_equal(halvings, looks.halves(seed, splits=3)) for seed in range(1, 4))


# ------------------------------------------------------------------------ the default rule: simplest within noise


def test_a_noisy_addition_winning_by_less_than_one_standard_error_gives_way_to_the_simpler_setting():
    # a small validation set (40 users): the addition ranks 4 users' positives first and 10 others' tenth, the rest
    # as the plain setting does; it wins validation by 0.021 with a standard error of 0.030 over users
    ranks = [0] * 4 + [9] * 10 + [3] * (GUARD_USERS - 14)
    offers = {"plain": PLAIN, "noisy": ranked_at(ranks)}
    assert select(GuardOffers(offers), GUARD_WORLD, rule="best").setting == "noisy"
    choice = select(GuardOffers(offers), GUARD_WORLD)
    assert choice.rule == "simplest_within_noise" and choice.setting == "plain" and choice.overruled
    assert choice.best_score - choice.score == pytest.approx((4 * (1 - ndcg(3)) + 10 * (ndcg(9) - ndcg(3))) / 40)
    assert 0 < choice.best_score - choice.score <= choice.gap_error


def test_an_addition_whose_gain_is_larger_than_the_noise_is_kept():
    # every user's positive moves up two places: the gain is the same for all, its standard error 0
    offers = {"plain": PLAIN, "helps everyone": ranked_at([1] * GUARD_USERS)}
    choice = select(GuardOffers(offers), GUARD_WORLD)
    assert choice.setting == "helps everyone" and not choice.overruled and choice.gap_error == 0
    assert choice.score == choice.best_score == pytest.approx(ndcg(1))


def test_the_winner_of_many_noisy_additions_beats_one_standard_error_and_the_guard_still_catches_it():
    # the winner's curse: the luckiest of 40 noisy additions wins by more than the error of one comparison, so the
    # default rule alone keeps it; cross-fitting measures the luck of having been picked from 40, and the guard on
    # top of the rule gives way to the plain setting (why train.guard_additions stays on beside the rule)
    rng = np.random.default_rng(0)
    noise = {f"noisy {k}": ranked_at(np.where(rng.random(GUARD_USERS) < 0.16, 0, 8)) for k in range(40)}
    offers = {"plain": PLAIN, **noise}
    alone = select(GuardOffers(offers), GUARD_WORLD)
    assert alone.setting.startswith("noisy") and alone.best_score - PLAIN_SCORE > alone.gap_error
    guarded = select(GuardOffers(offers), GUARD_WORLD, guard_additions=True)
    assert guarded.setting == "plain" and guarded.overruled and guarded.cross_fitted_gain < 0


def test_the_simplest_eligible_level_is_kept_and_within_it_the_best_score():
    # levels of simplicity: the plain setting is more than one standard error behind (not eligible); of the two
    # one-part additions both within the noise of the two-part best, the better scoring one is kept
    class Levels(GuardOffers):
        def simplicity(self, setting):
            return {"plain": (0,), "one part, worse": (1,), "one part": (1,), "two parts": (2,)}[setting]

    offers = {"plain": ranked_at([5] * GUARD_USERS), "one part, worse": ranked_at([1] * 39 + [2]),
              "one part": ranked_at([1] * GUARD_USERS), "two parts": ranked_at([0, 2] + [1] * 38)}
    choice = select(Levels(offers), GUARD_WORLD)
    assert choice.setting == "one part" and choice.best_score == pytest.approx((1 + ndcg(2) + 38 * ndcg(1)) / 40)


def test_the_standard_error_is_over_users_from_paired_per_user_differences():
    # two positives per user, the two rows of a user summed; users / positives scales the sums to the mean gap
    best = select_module.Scored("best", np.array([1.0, 1.0, 0.5, 0.5, 0.2, 0.2]), None, (1,))
    other = select_module.Scored("other", np.array([0.5, 1.0, 0.5, 0.5, 0.2, 0.0]), None, (0,))
    gaps, errors = select_module.paired_gaps(best, [best, other], np.array([0, 0, 1, 1, 2, 2]))
    per_user = np.array([0.5, 0.0, 0.2]) * 3 / 6
    assert gaps == pytest.approx([0.0, per_user.mean()]) and gaps[1] == pytest.approx(0.7 / 6)
    assert errors == pytest.approx([0.0, per_user.std(ddof=1) / math.sqrt(3)])


def test_bert_rs_orders_no_text_before_fewer_text_parts_before_smaller_weights():
    plain = review_ease.Setting(False, 0.0, 100.0, "ease", "user_profile", 0.0, 0.25, 1.0)
    no_text = [plain, plain._replace(item_weight=0.0, pop_weight=1.0), plain._replace(ease_lambda=10.0, whiten=True)]
    simplest_first = [plain._replace(regulariser="l3ae"), plain._replace(text_weight=0.25),
                      plain._replace(side_weight=0.5), plain._replace(side_weight=2.0),
                      plain._replace(side_weight=0.5, whiten=True), plain._replace(side_weight=0.5, text_weight=0.25),
                      plain._replace(side_weight=0.5, text_weight=0.25, regulariser="l3ae")]
    simplicity = tiny_bert_rs().simplicity
    assert len({simplicity(setting) for setting in no_text}) == 1  # lambda, popularity, whitening: left to the score
    ordered = [simplicity(setting) for setting in [no_text[0]] + simplest_first]
    assert ordered == sorted(ordered) and len(set(ordered)) == len(ordered)


# ------------------------------------------------------------------------------------------- screening


def test_a_screened_search_scores_only_the_candidates_near_the_screens_best_on_the_other_users(monkeypatch):
    monkeypatch.setattr(select_module, "SCREEN_FROM_USERS", GUARD_USERS)
    # every candidate moves every user alike, so the screen's errors are 0: of the others, only the ties of its best
    # can go on; of 9 candidates the top eighth (two) goes on, and the best of each level of simplicity; the whole
    # simplest level (the plain settings) goes on whatever its gap
    offers = {"plain": PLAIN, "plain, far behind": ranked_at([9] * GUARD_USERS),
              "helps everyone": ranked_at([1] * GUARD_USERS), "helps as much": ranked_at([1] * GUARD_USERS),
              "helps as much too": ranked_at([1] * GUARD_USERS), "helps as much again": ranked_at([1] * GUARD_USERS),
              **{f"behind {k}": ranked_at([5] * GUARD_USERS) for k in range(3)}}

    class Levels(GuardOffers):
        def simplicity(self, setting):
            return (1,) if setting == "helps as much again" else (0,) if setting.startswith("plain") else (2,)

    model = Levels(offers)
    choice = select(model, GUARD_WORLD, rule="best", seed=3)
    assert model.asked_for[0] is None
    assert model.asked_for[1] == {"plain", "plain, far behind", "helps everyone", "helps as much",
                                  "helps as much again"}
    assert choice.setting == "helps everyone" and choice.looks == 9 and choice.screened_to == 5
    unscreened = select(GuardOffers(offers), GUARD_WORLD, rule="best", screen=False)
    assert (unscreened.setting, unscreened.score, unscreened.screened_to) == (choice.setting, choice.score, None)


def test_a_screened_candidate_is_scored_exactly_as_unscreened(monkeypatch):
    monkeypatch.setattr(select_module, "SCREEN_FROM_USERS", GUARD_USERS)
    monkeypatch.setattr(select_module, "SCREEN_Z", 100.0)  # both survive
    offers = {"plain": PLAIN, "noisy": ranked_at([0] * 6 + [7] * 6 + [3] * (GUARD_USERS - 12))}
    screened, unscreened = (select(GuardOffers(offers), GUARD_WORLD, screen=on) for on in (True, False))
    assert screened.screened_to == 2  # both survive the screen
    assert (screened.setting, screened.score, screened.best_score, screened.gap_error) == (
        unscreened.setting, unscreened.score, unscreened.best_score, unscreened.gap_error)


def test_a_screened_search_makes_each_text_product_with_the_inverse_once_for_both_of_its_passes(monkeypatch):
    """Q F = (X^T X + lambda I)^-1 F, an (items x items) x (items x d) product per (whitening, lambda), does not
    depend on the users scored: the screen and the choosing pass share it (at 17k items, 12 products of 5 s)."""
    monkeypatch.setattr(select_module, "SCREEN_FROM_USERS", 7)
    monkeypatch.setattr(select_module, "SCREEN_Z", 1e9)  # the choosing pass asks for every lambda again
    monkeypatch.setattr(select_module, "SCREEN_KEEP", 1.0)
    products = []
    inverse_times = review_ease.EigenGram.inverse_times
    monkeypatch.setattr(review_ease.EigenGram, "inverse_times", lambda self, columns, lam: products.append(lam) or
                        inverse_times(self, columns, lam))
    data, model = bert_rs_world(seed=9)
    times_inverse = []  # the users' products, one per lambda and pass
    monkeypatch.setattr(review_ease.EigenGram, "times_inverse",
                        lambda self, rows, lam, f=review_ease.EigenGram.times_inverse: times_inverse.append(lam) or
                        f(self, rows, lam))
    select(model, data, rule="best")
    assert sorted(times_inverse) == sorted([1.0, 10.0, 100.0] * 2)  # two passes over the users
    assert sorted(products) == sorted([1.0, 10.0, 100.0] * 2)  # once per (whitening, lambda): two whitenings


def test_bert_rs_makes_each_text_part_once_per_whitening_and_only_those_the_settings_asked_for_weigh(monkeypatch):
    made = []
    text_scores = review_ease.ReviewAwareEASE.text_scores
    monkeypatch.setattr(review_ease.ReviewAwareEASE, "text_scores",
                        lambda self, users, match=None, whiten=None: made.append((whiten, match)) or
                        text_scores(self, users, match, whiten))
    data, model = bert_rs_world(seed=9)
    looks = ValidationLooks(data)
    assert len(list(looks.ranked_candidates(model))) == len(model.space)
    assert sorted(made) == sorted((w, m) for w in (False, True) for m in ("item_neighbours", "user_profile"))
    made.clear()
    wanted = {review_ease.Setting(True, 1.0, 10.0, "l3ae", "user_profile", 0.5, 1.0, 1.0),
              review_ease.Setting(False, 0.0, 100.0, "ease", "item_neighbours", 0.0, 0.0, 1.0)}  # no text weighed
    assert {setting for setting, _ in looks.ranked_candidates(model, only=wanted)} == wanted
    assert made == [(True, "user_profile")]


def test_bert_rs_asked_for_some_settings_computes_only_their_lambdas_and_a_screened_search_chooses_as_unscreened(
        monkeypatch):
    data, model = bert_rs_world(seed=9)
    full = select(model, data, rule="best")
    products = []
    times_inverse = review_ease.EigenGram.times_inverse
    monkeypatch.setattr(review_ease.EigenGram, "times_inverse", lambda self, rows, lam: products.append(lam) or
                        times_inverse(self, rows, lam))
    side_grams = []  # one per (whitening, side weight, lambda) computed
    with_side_gram = review_ease.with_side_gram
    monkeypatch.setattr(review_ease, "with_side_gram", lambda *a, **k: side_grams.append(1) or with_side_gram(*a, **k))
    data, model = bert_rs_world(seed=9)
    wanted = {review_ease.Setting(True, 1.0, 10.0, "l3ae", "user_profile", 0.5, 1.0, 1.0),
              review_ease.Setting(False, 0.0, 10.0, "ease", "item_neighbours", 0.0, 0.0, 1.0)}
    offered = ValidationLooks(data).ranked_candidates(model, only=wanted)
    assert {setting for setting, _ in offered} == wanted and products == [10.0]  # one lambda's product, no other
    assert len(side_grams) == 2  # of the 2 x 3 (whitening, side weight) pairs at that lambda, the two asked for
    # a screen that lets nearly everything through (not what its two users tell apart without error): two passes
    # over parts of the users give the unscreened scores
    monkeypatch.setattr(select_module, "SCREEN_FROM_USERS", 7)
    monkeypatch.setattr(select_module, "SCREEN_Z", 1e9)
    monkeypatch.setattr(select_module, "SCREEN_KEEP", 1.0)
    data, model = bert_rs_world(seed=9)
    screened = select(model, data, rule="best")
    assert screened.looks == full.looks and full.looks * 0.9 < screened.screened_to <= full.looks
    assert (screened.setting, screened.score) == (full.setting, full.score)


def test_a_float32_search_screened_chooses_as_unscreened_and_as_float64(monkeypatch):
    """`train.search_precision: float32`: the screen's two passes over parts of the users round their products
    differently from one pass over all of them, by far less than what a ranking tells apart."""
    data, model = bert_rs_world(seed=9)
    full = select(model, data, rule="best")
    monkeypatch.setattr(select_module, "SCREEN_FROM_USERS", 7)
    monkeypatch.setattr(select_module, "SCREEN_Z", 1e9)
    monkeypatch.setattr(select_module, "SCREEN_KEEP", 1.0)
    data, model = bert_rs_world(seed=9)
    model.use_search_precision(torch.float32)
    screened = select(model, data, rule="best")
    assert screened.screened_to is not None
    assert screened.setting == full.setting and screened.score == pytest.approx(full.score, abs=1e-9)


def test_a_float32_search_from_the_shared_decomposition_decomposes_nothing_and_lets_the_float64_one_go(
        monkeypatch):
    """The search keeps one float32 copy of the gram stage's eigenvectors (half the bytes of the float64 ones, which
    it lets go), for both passes of a screened search."""
    decomposed = []

    class Counted(review_ease.EigenGram):
        def __init__(self, gram):
            decomposed.append(gram.shape)
            super().__init__(gram)

    data, model = bert_rs_world(seed=9)
    shared = review_ease.EigenGram(model.gram().clone())
    monkeypatch.setattr(baselines, "EigenGram", Counted)
    monkeypatch.setattr(select_module, "SCREEN_FROM_USERS", 7)
    model.use_shared_eigen(shared)
    model.use_search_precision(torch.float32)
    choice = select(model, data, rule="best")
    assert decomposed == [] and model.ease._shared_eigen is None and choice.screened_to is not None
    data, exact = bert_rs_world(seed=9)
    assert choice.setting == select(exact, data, rule="best").setting


def test_bert_rs_counts_only_text_free_settings_as_plain():
    # whitening reads nothing here
    plain_ease = review_ease.Setting(True, 0.0, 100.0, "ease", "user_profile", 0.0, 0.25, 1.0)
    assert tiny_bert_rs().is_plain(plain_ease)
    assert tiny_bert_rs().is_plain(plain_ease._replace(item_weight=0.0, pop_weight=1.0))  # popularity alone
    for text in ({"side_weight": 0.5}, {"text_weight": 0.25}, {"regulariser": "l3ae"}):
        assert not tiny_bert_rs().is_plain(plain_ease._replace(**text)), text


def tiny_bert_rs():
    return review_ease.ReviewAwareEASE(7, 11, tiny_profiles(), ReviewAwareSpace(lambdas=[1.0]))


# ------------------------------------------------------------------------------------------- pinned choices


def test_bert_rs_keeps_its_pinned_joint_choice(ranking_env):
    config = ranking_env.config.override("bert_rs", lambdas=[10.0, 100.0, 1000.0], text_side_weights=[0.0, 2.0])
    result = train(BERT_RS, config, ranking_env.data, ranking_env.profiles(), progress=False)
    assert result.model.choices() == {
        "ease_lambda": 1000.0, "side_weight": 2.0, "regulariser": "ease", "whitening": False,
        "text_match": "item_neighbours", "text_weight": 0.0, "pop_weight": 0.25, "pop_only": False,
        # 2 whitenings x 2 side weights x 3 lambdas x 2 regularisers, each with w = 0 once and 3 weights x 3
        # matches, each at 3 popularity weights; plus popularity alone
        "validation_looks": 2 * 2 * 3 * 2 * (1 + 3 * 3) * 3 + 1,
    }
    assert result.best_valid["ndcg@10"] == pytest.approx(0.13792302217093508, abs=1e-6)
    # the validation best adds the text match (w 0.5, p 1.0) to the side gram, by less than one standard error: the
    # default rule keeps the side gram alone, one text part fewer
    selection = result.selection
    assert selection.overruled and selection.best_score == pytest.approx(0.14187886027859284, abs=1e-6)
    assert 0 < selection.best_score - selection.score <= selection.gap_error


def test_ease_keeps_its_pinned_lambda(ranking_env):
    config = ranking_env.config.override("ease", lambdas=[1.0, 30.0, 300.0, 3000.0])
    result = train(RunSpec(model="ease"), config, ranking_env.data, progress=False)
    assert result.model.choices() == {"ease_lambda": 3000.0, "validation_looks": 4}
    assert result.best_valid["ndcg@10"] == pytest.approx(0.10719859456481984, abs=1e-6)


def test_ease_with_one_lambda_chooses_nothing(ranking_env):
    config = ranking_env.config.override("ease", lambdas=[300.0])
    result = train(RunSpec(model="ease"), config, ranking_env.data, progress=False)
    assert result.model.choices() is None
    assert result.best_valid["ndcg@10"] == pytest.approx(0.10716250736201548, abs=1e-6)


def test_the_scalable_solver_keeps_its_pinned_text_weight(ranking_env):
    config = ranking_env.config.override("bert_rs", solver="scalable", rank=16, epochs=3,
                                         text_weights=[0.0, 0.25, 0.5, 1.0, 2.0])
    result = train(BERT_RS, config, ranking_env.data, ranking_env.profiles(), progress=False)
    assert result.model.choices()["text_weight"] == 0.5
    assert result.best_valid["ndcg@10"] == pytest.approx(0.10245040285325736, abs=1e-6)


@pytest.mark.parametrize("run", ["bert_rs", "ease"])
def test_a_model_with_a_grid_solves_only_the_chosen_setting_once_chosen_and_once_refitted(ranking_env, monkeypatch,
                                                                                          run):
    """The plain solve a fit made before its search was thrown away by `apply` (an n^3 solve at the paper's size):
    a search's model holds its pairs, and solves the choice only (here without a final fit: once)."""
    solves = []
    inverse = baselines.ridge_inverse_
    monkeypatch.setattr(baselines, "ridge_inverse_", lambda *a: solves.append(a[1]) or inverse(*a))
    monkeypatch.setattr(review_ease, "ridge_inverse_", baselines.ridge_inverse_)
    config = ranking_env.config.override("ease", lambdas=[1.0, 300.0]).override("bert_rs", lambdas=[10.0, 1000.0])
    spec, profiles = (BERT_RS, ranking_env.profiles()) if run == "bert_rs" else (RunSpec(model="ease"), None)
    result = train(spec, config, ranking_env.data, profiles, progress=False)
    chosen = result.selection.setting if run == "ease" else result.selection.setting.ease_lambda
    assert result.fitted_on == "train" and solves == [chosen]


@pytest.mark.parametrize("run", ["bert_rs", "ease"])
def test_with_a_final_fit_to_follow_the_choice_is_solved_once_on_training_and_validation_pairs(ranking_env,
                                                                                                monkeypatch, run):
    """A solve on the training pairs alone would never score anything (a minute at the paper's size): the final fit
    solves the chosen setting once, and the validation record is the search's own measurement of it."""
    solves = []
    inverse = baselines.ridge_inverse_
    monkeypatch.setattr(baselines, "ridge_inverse_", lambda *a: solves.append(a[1]) or inverse(*a))
    monkeypatch.setattr(review_ease, "ridge_inverse_", baselines.ridge_inverse_)
    config = ranking_env.config.override("ease", lambdas=[1.0, 300.0]).override("bert_rs", lambdas=[10.0, 1000.0])
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, refit_with_validation=True))
    spec, profiles = (BERT_RS, ranking_env.profiles()) if run == "bert_rs" else (RunSpec(model="ease"), None)
    result = train(spec, config, ranking_env.data, profiles, progress=False)
    chosen = result.selection.setting if run == "ease" else result.selection.setting.ease_lambda
    assert result.fitted_on == "train+valid" and solves == [chosen]  # the final fit's solve alone
    looks = ValidationLooks(ranking_env.data)
    assert result.best_valid == {"hr@10": pytest.approx(result.selection.hit_rate),
                                 "ndcg@10": result.selection.score, "n": len(looks.heldout)}
    assert 0 < result.selection.hit_rate < 1 and result.selection.hit_rate >= result.selection.score


def test_with_the_guard_on_a_screened_search_keeps_the_best_plain_setting_for_the_guard_to_measure(monkeypatch):
    monkeypatch.setattr(select_module, "SCREEN_FROM_USERS", GUARD_USERS)
    offers = {"plain lambda 10": ranked_at([6] * GUARD_USERS), "plain lambda 100": PLAIN,
              "helps everyone": ranked_at([1] * GUARD_USERS)}

    class TextFirst(GuardOffers):  # a model whose simplest level is not its plain form
        def simplicity(self, setting):
            return (1,) if self.is_plain(setting) else (0,)

    unguarded = TextFirst(offers)
    select(unguarded, GUARD_WORLD, rule="best")
    assert unguarded.asked_for[1] == {"helps everyone"}  # the plain settings are far behind on the screen
    guarded = TextFirst(offers)
    choice = select(guarded, GUARD_WORLD, rule="best", guard_additions=True)
    assert guarded.asked_for[1] == {"helps everyone", "plain lambda 100"}
    assert choice.setting == "helps everyone" and choice.cross_fitted_gain == pytest.approx(ndcg(1) - ndcg(3))
