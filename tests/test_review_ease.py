"""The default bert_rs's closed forms and its joint validation search (pipeline/ranking/models/review_ease.py):

- the eigendecomposition path equals the dense solve, for EASE and L3AE, with side information and whitening; the
  solves done in place and by blocks of rows equal numpy's, and the whole fit holds at most four item-item matrices;
- L3AE's closed form equals a direct per-column constrained least-squares solve, and its text prior, applied in
  factored form, equals EASE on the text gram;
- whitening gives identity covariance;
- the search covers plain EASE and popularity, so on validation it is never below either; it picks popularity when
  popularity is what predicts, and text when text is what predicts; it never reads the test split.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data.prepared import Interactions, PreparedData
from pipeline.embeddings.cache import Profiles
from pipeline.ranking.models import baselines
from pipeline.ranking.models.baselines import EASE, Popularity
from pipeline.ranking.evaluation.evaluate import evaluate, full_ranking_mask, rank_full
import pipeline.ranking.models.review_ease as review_ease
from pipeline.ranking.models.review_ease import ReviewAwareEASE, whitening_transform
from pipeline.ranking.evaluation.metrics import metrics_from_ranks
from pipeline.ranking.training.sampling import PairSet
from pipeline.ranking.selection.select import select
from pipeline.ranking.selection.spaces import ReviewAwareSpace
from tests.ranking_fixtures import in_memory_data


def random_profiles(rng, n_users: int, n_items: int, dim: int) -> Profiles:
    return Profiles(rng.normal(size=(n_users, dim)).astype(np.float32),
                    rng.normal(size=(n_items, dim)).astype(np.float32),
                    np.ones(n_users, bool), np.ones(n_items, bool), {},
                    rng.normal(size=(n_users, dim)).astype(np.float32))


def valid_ndcg(model, data: PreparedData) -> float:
    return metrics_from_ranks(rank_full(model, data.valid, full_ranking_mask(data, "valid")).ranks, [10])["ndcg@10"]


def random_world(seed: int = 0, n_users: int = 60, n_items: int = 25):
    """Random training rows and one held-out item per user for validation and test."""
    rng = np.random.default_rng(seed)
    x = (rng.random((n_users, n_items)) < 0.25).astype(float)
    held = [rng.choice(np.flatnonzero(x[u] == 0), 2, replace=False) for u in range(n_users)]
    users = np.arange(n_users)
    data = in_memory_data(n_users, n_items, np.nonzero(x), (users, [h[0] for h in held]),
                          (users, [h[1] for h in held]))
    return data, x, random_profiles(rng, n_users, n_items, 6)


def dense_text_prior(unit: np.ndarray, nu: float = review_ease.TEXT_PRIOR_LAMBDA) -> np.ndarray:
    """L3AE's S written out: EASE on the text gram F F^T, zero diagonal."""
    p = np.linalg.inv(unit @ unit.T + nu * np.eye(len(unit)))
    prior = -p / np.diag(p)[None, :]
    np.fill_diagonal(prior, 0.0)
    return prior


# ------------------------------------------------------------------------------------------- closed forms


def test_the_solves_done_in_place_and_by_blocks_of_rows_equal_numpy(monkeypatch):
    """The n_items^2 work runs in the matrices' own memory and a block of rows at a time (at 17k items each
    matrix is 2.3 GB); with blocks of 3 rows on 25 items every block boundary is crossed."""
    monkeypatch.setattr(baselines, "ROW_BLOCK", 3)
    _, x, _ = random_world(seed=4)
    gram, lam = torch.tensor(x.T @ x), 2.0
    p = np.linalg.inv(x.T @ x + lam * np.eye(len(gram)))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(baselines.ridge_inverse_(gram.clone(), lam).numpy(), p, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(baselines.ease_weights(gram, lam).numpy(), b, rtol=1e-9, atol=1e-12)
    assert torch.equal(gram, torch.tensor(x.T @ x))  # ease_weights leaves the gram as it was
    eig = baselines.EigenGram(gram.clone())
    np.testing.assert_allclose(eig.inverse_diagonal(lam).numpy(), np.diag(p), rtol=1e-9)
    np.testing.assert_allclose(eig.ease_weights(lam).numpy(), b, rtol=1e-4, atol=1e-6)  # float32


def test_a_gram_that_lambda_does_not_make_positive_definite_is_refused_naming_lambda():
    singular = torch.ones(4, 4, dtype=torch.float64)  # rank one: X^T X of one user with every item
    with pytest.raises(ValueError, match="not positive definite at lambda = 0.0"):
        baselines.ridge_inverse_(singular, 0.0)


def test_the_dense_fit_search_and_refit_hold_at_most_four_item_matrices_at_once():
    """bert_rs's memory is a few n_items^2 float64 matrices (2.3 GB each at 17k items): building the gram, its
    eigendecomposition, the inverse and B in each other's memory keeps the peak near three of them, where it was
    above five; measured in a process of its own (tests/dense_peak_probe.py)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    run = subprocess.run([sys.executable, "-m", "tests.dense_peak_probe", "200", "2500"], env=env, check=True,
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert float(run.stdout) < 4.0


def test_every_grid_point_scored_from_the_eigendecomposition_equals_the_dense_solve():
    data, x, profiles = random_world()
    model = ReviewAwareEASE(data.n_users, data.n_items, profiles,
                            ReviewAwareSpace(lambdas=[0.5, 3.0, 40.0], side_weights=[0.0, 2.0],
                                             regularisers=["ease", "l3ae"], whitening=[False, True]))
    model.fit(data.train.users, data.train.items)
    seen = 0
    for (whiten, side, lam, reg), scores in model.item_model_grid(torch.arange(data.n_users)):
        model.solve(side, lam, reg, whiten)
        np.testing.assert_allclose(scores.numpy(), x @ model.ease.B.double().numpy(), atol=1e-5)
        seen += 1
    assert seen == 2 * 2 * 3 * 2
    model.solve(0.0, 3.0, "ease", False)  # plain EASE at that lambda
    torch.testing.assert_close(model.ease.B, EASE(data.n_users, data.n_items, 3.0).fit(*np.nonzero(x)).B)


def test_l3ae_closed_form_equals_a_per_column_constrained_least_squares_solve():
    """min ||x_j - X b||^2 + lambda ||b - s_j||^2 with b_j = 0, solved column by column as a stacked lstsq."""
    data, x, profiles = random_world(n_users=30, n_items=10)
    lam = 2.5
    model = ReviewAwareEASE(data.n_users, data.n_items, profiles,
                            ReviewAwareSpace(lambdas=[lam])).fit(data.train.users, data.train.items)
    model.solve(0.0, lam, "l3ae", False)
    s = dense_text_prior(model.unit_i.double().numpy())
    for j in range(data.n_items):
        others = [k for k in range(data.n_items) if k != j]
        design = np.vstack([x[:, others], np.sqrt(lam) * np.eye(len(others))])
        target = np.concatenate([x[:, j], np.sqrt(lam) * s[others, j]])
        b, *_ = np.linalg.lstsq(design, target, rcond=None)
        np.testing.assert_allclose(model.ease.B.numpy()[others, j], b, atol=1e-5)
        assert model.ease.B[j, j] == 0


def test_the_factored_text_prior_equals_ease_on_the_text_gram_with_a_zero_diagonal():
    """L3AE's S is never formed (n^2 memory, an n^3 inverse); I - S and diag(P S) from its factors equal the dense S."""
    data, _, profiles = random_world()
    model = ReviewAwareEASE(data.n_users, data.n_items, profiles,
                            ReviewAwareSpace(lambdas=[1.0])).fit(data.train.users, data.train.items)
    unit = model.unit_i.double()
    s = dense_text_prior(unit.numpy())
    prior = review_ease.LowRankPrior(unit, review_ease.TEXT_PRIOR_LAMBDA)
    rows = torch.randn(7, data.n_items, dtype=torch.float64)
    np.testing.assert_allclose(prior.complement_times(rows).numpy(), rows.numpy() @ (np.eye(data.n_items) - s),
                               atol=1e-10)
    a = torch.randn(data.n_items, data.n_items, dtype=torch.float64)
    p = a @ a.T + torch.eye(data.n_items, dtype=torch.float64)  # any symmetric P
    np.testing.assert_allclose(prior.diagonal_of(torch.diagonal(p), p @ unit).numpy(), np.diag(p.numpy() @ s),
                               atol=1e-9)


def test_standardising_in_place_gives_the_same_scores_bit_for_bit():
    scores = torch.tensor(np.random.default_rng(0).normal(3.0, 2.0, size=(5, 17)))
    expected = review_ease.standardise(scores)
    assert torch.equal(review_ease.standardise_(scores.clone()), expected)


def test_whitening_gives_identity_covariance():
    rng = np.random.default_rng(0)
    anisotropic = rng.normal(size=(4000, 5)) @ rng.normal(size=(5, 5)) * [10.0, 3.0, 1.0, 0.3, 0.1] + 7.0
    mean, w = whitening_transform(anisotropic, shrinkage=0.0)
    np.testing.assert_allclose(np.cov((anisotropic - mean) @ w, rowvar=False), np.eye(5), atol=1e-6)
    _, shrunk = whitening_transform(anisotropic, shrinkage=0.1)  # the floor damps the weakest directions' boost
    assert np.linalg.norm(shrunk, 2) < np.linalg.norm(w, 2)


# ------------------------------------------------------------------------------------------- the search


def test_a_float32_grid_scores_every_point_as_the_float64_grid_does_and_solves_the_choice_in_float64():
    """`train.search_precision: float32` halves the bytes of the grid's products; the scores move by float32's
    rounding, far below the gaps a ranking compares, and the chosen setting is solved as before."""
    data, _, profiles = random_world(seed=6, n_users=120, n_items=60)
    space = ReviewAwareSpace(lambdas=[0.5, 3.0, 40.0, 1000.0], side_weights=[0.0, 2.0], regularisers=["ease", "l3ae"],
                             whitening=[False, True])
    grids = {}
    for dtype in (torch.float64, torch.float32):
        model = ReviewAwareEASE(data.n_users, data.n_items, profiles, space).fit(data.train.users, data.train.items)
        model.use_search_precision(dtype)
        grids[dtype] = {point: scores for point, scores in model.item_model_grid(torch.arange(data.n_users))}
        assert {scores.dtype for scores in grids[dtype].values()} == {dtype}
    assert grids[torch.float32].keys() == grids[torch.float64].keys()
    for point, exact in grids[torch.float64].items():
        scale = float(exact.abs().max())
        np.testing.assert_allclose(grids[torch.float32][point].double().numpy(), exact.numpy(), atol=1e-5 * scale)
    model.solve(2.0, 3.0, "l3ae", True)
    assert model.ease.B.dtype == torch.float32  # B is kept in float32 as always, from the float64 solve
    exact = ReviewAwareEASE(data.n_users, data.n_items, profiles, space).fit(data.train.users, data.train.items)
    exact.solve(2.0, 3.0, "l3ae", True)
    assert torch.equal(model.ease.B, exact.ease.B)


def test_a_float32_search_chooses_the_setting_the_float64_search_chooses():
    data, profiles = topic_world(seed=2, n_users=300, n_items=90)
    space = ReviewAwareSpace(lambdas=[1.0, 10.0, 100.0], side_weights=[0.0, 1.0], matches=["item_neighbours",
                             "user_profile"], text_weights=[0.0, 0.25, 0.5, 1.0], regularisers=["ease", "l3ae"],
                             whitening=[False, True], pop_weights=[0.0, 0.25, 1.0])
    chosen = {}
    for dtype in (torch.float64, torch.float32):
        model = ReviewAwareEASE(data.n_users, data.n_items, profiles, space).fit(data.train.users, data.train.items)
        model.use_search_precision(dtype)
        choice = select(model, data)
        chosen[dtype] = (model.choices(), choice.score)
    assert chosen[torch.float32][0] == chosen[torch.float64][0]
    assert chosen[torch.float32][1] == pytest.approx(chosen[torch.float64][1], abs=1e-6)


def test_a_single_value_grid_reproduces_that_fixed_configuration():
    data, x, profiles = random_world()
    model = ReviewAwareEASE(data.n_users, data.n_items, profiles,
                            ReviewAwareSpace(lambdas=[7.0], side_weights=[2.0], matches=["item_neighbours"],
                                             text_weights=[0.5], regularisers=["l3ae"], whitening=[True],
                                             pop_weights=[0.3]))
    select(model.fit(data.train.users, data.train.items), data)
    assert model.choices() == {"ease_lambda": 7.0, "side_weight": 2.0, "regulariser": "l3ae", "whitening": True,
                               "text_match": "item_neighbours", "text_weight": 0.5, "pop_weight": 0.3,
                               "pop_only": False, "validation_looks": 1}
    fixed = ReviewAwareEASE(data.n_users, data.n_items, profiles,
                            ReviewAwareSpace(lambdas=[7.0], side_weights=[2.0], matches=["item_neighbours"],
                                             text_weights=[0.5], regularisers=["l3ae"],
                                             whitening=[True])).fit(data.train.users, data.train.items)
    fixed.solve(2.0, 7.0, "l3ae", True)
    torch.testing.assert_close(model.ease.B, fixed.ease.B)


def test_each_candidate_scores_its_item_model_plus_w_times_its_own_text_match_plus_p_times_popularity():
    """Built from the block's parts as the selector builds them, a candidate's scores are the standardised item
    model, w times the standardised text match it names (once, even where the grid lists a match twice) and p times
    standardised popularity."""
    data, x, profiles = random_world(seed=5)
    model = ReviewAwareEASE(data.n_users, data.n_items, profiles,
                            ReviewAwareSpace(lambdas=[3.0], side_weights=[0.0],
                                             matches=["item_neighbours", "user_profile", "user_profile"],
                                             text_weights=[0.0, 0.5], pop_weights=[0.0, 0.25]))
    model.fit(data.train.users, data.train.items)
    users = torch.arange(data.n_users)
    block = next(offered for offered in model.candidates(users) if not isinstance(offered, tuple))
    item = review_ease.standardise(EASE(data.n_users, data.n_items, 3.0).fit(*np.nonzero(x)).score_all(users).double())
    pop = review_ease.standardise(model.log_counts[None, :].double())
    seen = 0
    for k, setting in enumerate(block.settings):
        text = review_ease.standardise(model.text_scores(users, setting.text_match, False).double())
        expected = item + setting.text_weight * text + setting.pop_weight * pop
        torch.testing.assert_close(block.scores(k, block.parts).expand_as(expected), expected, atol=1e-5, rtol=0)
        seen += setting.text_weight > 0
    assert seen == 3 * 2  # three listed matches x two popularity weights at w = 0.5


def test_the_search_covers_the_joint_grid_and_is_never_below_ease_or_popularity_on_validation():
    data, x, profiles = random_world(seed=3)
    lambdas, sides, weights = [1.0, 10.0, 100.0], [0.0, 1.0], [0.0, 0.5]
    model = ReviewAwareEASE(data.n_users, data.n_items, profiles,
                            ReviewAwareSpace(lambdas=lambdas, side_weights=sides,
                                             matches=["item_neighbours", "user_profile"], text_weights=weights,
                                             regularisers=["ease", "l3ae"], whitening=[False, True],
                                             pop_weights=[0.0, 1.0]))
    chosen = select(model.fit(data.train.users, data.train.items), data)
    assert chosen.looks == model.choices()["validation_looks"] == 2 * 2 * 3 * 2 * (1 + 2 * 1) * 2 + 1
    assert valid_ndcg(model, data) == pytest.approx(chosen.score, abs=1e-6)
    baselines = [Popularity(data.n_users, data.n_items).fit(data.train.users, data.train.items)]
    baselines += [EASE(data.n_users, data.n_items, lam).fit(data.train.users, data.train.items) for lam in lambdas]
    assert chosen.score >= max(valid_ndcg(b, data) for b in baselines) - 1e-6


def popularity_world(seed: int = 0):
    """Held-out items are the most popular ones, whose popularity comes from users who share no other item with
    anyone: co-occurrence cannot find them and the (random) text cannot either; only popularity can."""
    rng = np.random.default_rng(seed)
    n_regular, n_fans, n_items = 50, 40, 30
    users, items = [], []
    for u in range(n_regular):
        for i in rng.choice(np.arange(5, n_items), 3, replace=False):
            users.append(u), items.append(i)
    for f in range(n_fans):
        for i in range(5):
            if rng.random() < 1.0 - 0.15 * i:  # item 0 the most popular, then 1, ...
                users.append(n_regular + f), items.append(i)
    n_users = n_regular + n_fans
    regular = np.arange(n_regular)
    data = in_memory_data(n_users, n_items, (users, items), (regular, np.zeros(n_regular)),
                          (regular, np.ones(n_regular)))
    return data, random_profiles(rng, n_users, n_items, 6)


def test_when_popularity_predicts_the_search_picks_popularity_alone_and_ranks_exactly_like_it():
    data, profiles = popularity_world()
    model = ReviewAwareEASE(data.n_users, data.n_items, profiles,
                            ReviewAwareSpace(lambdas=[1.0, 100.0], side_weights=[0.0, 1.0], matches=["user_profile"],
                                             text_weights=[0.0, 0.5], pop_weights=[0.0, 0.25, 1.0]))
    select(model.fit(data.train.users, data.train.items), data)
    assert model.choices()["pop_only"]
    popularity = Popularity(data.n_users, data.n_items).fit(data.train.users, data.train.items)
    mask = full_ranking_mask(data, "test")
    np.testing.assert_array_equal(rank_full(model, data.test, mask).ranks, rank_full(popularity, data.test, mask).ranks)


def topic_world(seed: int = 0, n_users: int = 120, n_items: int = 60, n_topics: int = 6):
    """Each user likes one topic and has a single training item; item review vectors carry the topic. With one
    item per user, co-occurrence is empty and only text can say which items go together."""
    rng = np.random.default_rng(seed)
    item_topic = np.arange(n_items) % n_topics
    topic_vectors = rng.normal(size=(n_topics, 16))
    item_vectors = topic_vectors[item_topic] + 0.3 * rng.normal(size=(n_items, 16))
    user_topic = rng.integers(n_topics, size=n_users)
    picks = np.array([rng.choice(np.flatnonzero(item_topic == t), 3, replace=False) for t in user_topic])
    users = np.arange(n_users)
    profiles = Profiles(item_vectors[picks[:, 0]].astype(np.float32), item_vectors.astype(np.float32),
                        np.ones(n_users, bool), np.ones(n_items, bool), {})
    return in_memory_data(n_users, n_items, (users, picks[:, 0]), (users, picks[:, 1]), (users, picks[:, 2])), profiles


def test_when_text_predicts_the_search_uses_it_and_beats_ease_and_popularity_on_test():
    data, profiles = topic_world()
    model = ReviewAwareEASE(data.n_users, data.n_items, profiles,
                            ReviewAwareSpace(lambdas=[1.0, 100.0], side_weights=[0.0, 1.0],
                                             matches=["item_neighbours", "user_profile"], text_weights=[0.0, 0.5, 1.0],
                                             regularisers=["ease", "l3ae"], pop_weights=[0.0, 1.0]))
    select(model.fit(data.train.users, data.train.items), data)
    chosen = model.choices()
    assert chosen["text_weight"] > 0 or chosen["side_weight"] > 0 or chosen["regulariser"] == "l3ae"
    assert not chosen["pop_only"]

    def test_ndcg(m):
        return evaluate(m, data, "test", ks=[10], protocols=["full"])["full"]["ndcg@10"]

    ease = EASE(data.n_users, data.n_items, 100.0).fit(data.train.users, data.train.items)
    popularity = Popularity(data.n_users, data.n_items).fit(data.train.users, data.train.items)
    assert test_ndcg(model) > max(test_ndcg(ease), test_ndcg(popularity)) + 0.2


def test_choices_never_read_the_test_split(monkeypatch):
    """Test positives moved to other items: the choices stay the same. Which held-out pairs the validation mask
    holds is evaluate.py's contract, so it is pinned here to training + validation pairs for both runs."""
    import pipeline.ranking.selection.select as selection

    def train_and_valid_pairs(data, split):
        return PairSet(np.concatenate([data.train.users, data.valid.users]),
                       np.concatenate([data.train.items, data.valid.items]), data.n_users, data.n_items)

    monkeypatch.setattr(selection, "full_ranking_mask", train_and_valid_pairs)
    data, x, profiles = random_world(seed=5)

    def choices(d):
        model = ReviewAwareEASE(d.n_users, d.n_items, profiles,
                                ReviewAwareSpace(lambdas=[1.0, 30.0], side_weights=[0.0, 1.0],
                                                 matches=["item_neighbours", "user_profile"], text_weights=[0.0, 0.5],
                                                 regularisers=["ease", "l3ae"], whitening=[False, True],
                                                 pop_weights=[0.0, 1.0]))
        choice = select(model.fit(d.train.users, d.train.items), d)
        return choice.score, model.choices()

    moved = dataclasses.replace(data, test=Interactions(data.test.users, (data.test.items + 7) % data.n_items))
    assert choices(moved) == choices(data)
