"""User profiles one review behind, and bert_rs choosing its text settings with them:

- each user's newest training review is left out (equal times: the later row), unless it is the user's only one;
  the recency weights start again from the review before it;
- streamed from a cache they equal the in-memory profiles, and the shuffled ablation moves them with the user;
- they are asked for exactly where test lags the profiles: the final fit under leave-one-out;
- bert_rs chooses with them and is tested with the whole training profiles; where a user's newest review is adjacent
  to the validation item only, choosing with the whole profiles over-trusts it and ranks test worse.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import torch

from pipeline.config import BertRSConfig, RankingConfig, RunSpec, TrainConfig
from pipeline.embeddings.cache import Profiles
from pipeline.embeddings.recency import with_recent_users
from pipeline.embeddings.profiles import lagged_user_weights, mean_profiles, newest_of_each_user, weighted_user_means
from pipeline.ranking.evaluation.ablation import shuffle_profiles
from pipeline.ranking.evaluation.evaluate import evaluate
from pipeline.ranking.models.review_ease import centred_units
from pipeline.ranking.registry import load_model_profiles
import pipeline.ranking.training.train as train_module
from pipeline.ranking.training.lagged import LAGGED_PROFILES, WHOLE_PROFILES, profiles_lag_history
from pipeline.ranking.training.train import train
from tests.ranking_fixtures import in_memory_data
from tests.test_recency import write_review_cache


def test_each_users_newest_training_review_is_left_out_unless_it_is_their_only_one():
    users = np.array([0, 0, 0, 1, 2, 2, 2])
    times = np.array([5, 9, 1, 4, 7, 7, 3])
    # user 0: time 9 is newest; user 1 keeps its only review; user 2: a tie at 7, the later row counts as newer
    np.testing.assert_array_equal(newest_of_each_user(users, times), [0, 1, 0, 0, 0, 1, 0])
    mean_w, recent_w = lagged_user_weights(users, times)
    np.testing.assert_array_equal(mean_w, [1, 0, 1, 1, 1, 0, 1])
    # what is left is weighted as recency_weights weighs it: the review before the newest counts 1
    np.testing.assert_allclose(recent_w, [1, 0, 1 / 2, 1, 1, 0, 1 / 2])


def test_streamed_lagged_profiles_equal_the_in_memory_ones_and_the_mean_without_the_newest_review(tmp_path):
    rng = np.random.default_rng(0)
    users = np.array([0, 1, 0, 0, 1, 2, 0, 1])
    items = np.array([0, 1, 2, 0, 2, 1, 1, 0])
    times = np.array([1, 5, 3, 9, 2, 4, 7, 8])
    splits = np.array(["train", "train", "train", "test", "train", "valid", "train", "train"])
    vectors = rng.normal(size=(8, 4)).astype(np.float32)
    write_review_cache(tmp_path, np.arange(8), users, list(splits), vectors)
    reviews = pa.table({"review_id": np.arange(8), "user_idx": users, "time": times, "split": splits})
    tables = mean_profiles(users, items, splits, vectors, 3, 3, times=times, lagged=True)
    whole = Profiles.from_tables(tables, {"dim": 4})
    streamed = with_recent_users(dataclasses.replace(whole, lagged=None), tmp_path, reviews, lagged=True)
    without = with_recent_users(dataclasses.replace(whole, lagged=None), tmp_path, reviews)
    np.testing.assert_array_equal(streamed.recent_users, without.recent_users)  # the recent profile is untouched
    np.testing.assert_allclose(streamed.lagged.users, whole.lagged.users, rtol=1e-6)
    np.testing.assert_allclose(streamed.lagged.recent_users, whole.lagged.recent_users, rtol=1e-6)
    # user 0's training reviews are rows 0, 2, 6 (times 1, 3, 7): row 6 is left out; user 1 (rows 1, 4, 7): row 7
    np.testing.assert_allclose(whole.lagged.users[0], vectors[[0, 2]].mean(0), rtol=1e-6)
    np.testing.assert_allclose(whole.lagged.users[1], vectors[[1, 4]].mean(0), rtol=1e-6)
    np.testing.assert_allclose(whole.lagged.recent_users[1], (vectors[1] + vectors[4] / 2) / 1.5, rtol=1e-6)
    np.testing.assert_allclose(whole.users[0], vectors[[0, 2, 6]].mean(0), rtol=1e-6)  # the whole one keeps it
    np.testing.assert_array_equal(whole.lagged.items, whole.items)  # items are not lagged


def test_the_shuffled_ablation_moves_a_users_lagged_profile_with_their_whole_profile():
    rng = np.random.default_rng(1)
    users = rng.normal(size=(9, 3)).astype(np.float32)
    items = rng.normal(size=(4, 3)).astype(np.float32)
    lagged = Profiles(users - 50.0, items, np.ones(9, bool), np.ones(4, bool), {}, users - 60.0)
    profiles = Profiles(users, items, np.ones(9, bool), np.ones(4, bool), {}, users + 100.0, lagged)
    shuffled = shuffle_profiles(profiles, seed=0)
    assert not np.array_equal(shuffled.users, profiles.users)
    np.testing.assert_allclose(shuffled.lagged.users, shuffled.users - 50.0)
    np.testing.assert_allclose(shuffled.lagged.recent_users, shuffled.users - 60.0)
    np.testing.assert_array_equal(shuffled.lagged.items, shuffled.items)


def test_profiles_lag_only_where_the_final_fit_scores_a_leave_one_out_test_item():
    pairs = ([0, 1], [0, 1])
    data = in_memory_data(2, 2, pairs, pairs, pairs)
    loo, random = (dataclasses.replace(data, stats={"protocol": p}) for p in ("leave_one_out", "random"))
    assert profiles_lag_history(loo, TrainConfig(refit_with_validation=True))
    assert not profiles_lag_history(loo, TrainConfig(refit_with_validation=False))  # test is scored as validation
    assert not profiles_lag_history(random, TrainConfig(refit_with_validation=True))  # validation is not the newest
    no_valid = dataclasses.replace(loo, valid=in_memory_data(2, 2, pairs, ([], []), pairs).valid)
    assert not profiles_lag_history(no_valid, TrainConfig(refit_with_validation=True))  # no final fit happens


def adjacent_world(seed: int = 0, n_users: int = 150, n_topics: int = 6, per_topic: int = 8):
    """Each user reviewed three items of their topic, then one item of a passing topic, and the validation item is
    of that passing topic too; the test item is of the user's own topic again. The newest training review is
    adjacent to the validation item and says nothing about the test item. Leave-one-out stats."""
    rng = np.random.default_rng(seed)
    n_items = n_topics * per_topic
    item_topic = np.repeat(np.arange(n_topics), per_topic)
    topic_vectors = rng.normal(size=(n_topics, 8))
    item_vectors = topic_vectors[item_topic] + 0.3 * rng.normal(size=(n_items, 8))
    own, passing = rng.integers(n_topics, size=n_users), rng.integers(n_topics, size=n_users)
    passing = np.where(passing == own, (passing + 1) % n_topics, passing)
    train_rows, valid, test = ([], [], []), ([], []), ([], [])
    for u in range(n_users):
        owns = rng.choice(np.flatnonzero(item_topic == own[u]), 4, replace=False)
        passes = rng.choice(np.flatnonzero(item_topic == passing[u]), 2, replace=False)
        for t, i in enumerate([*owns[:3], passes[0]]):
            train_rows[0].append(u), train_rows[1].append(int(i)), train_rows[2].append(t)
        valid[0].append(u), valid[1].append(int(passes[1]))
        test[0].append(u), test[1].append(int(owns[3]))
    users, items, times = (np.asarray(x) for x in train_rows)
    vectors = (item_vectors[items] + 0.3 * rng.normal(size=(len(items), 8))).astype(np.float32)
    tables = mean_profiles(users, items, np.full(len(users), "train"), vectors, n_users, n_items, times=times,
                           lagged=True)
    data = in_memory_data(n_users, n_items, (users, items), valid, test)
    return dataclasses.replace(data, stats={"protocol": "leave_one_out"}), Profiles.from_tables(tables, {})


def small_grid(refit: bool, solver: str = "dense") -> RankingConfig:
    """bert_rs choosing only its text match and weight (no guard, no simplicity rule: the validation best is kept)."""
    shared = TrainConfig(device="cpu", seed=0, refit_with_validation=refit, guard_additions=False, choice_rule="best")
    solver_section = {"scalable": {"rank": 8, "epochs": 3}}.get(solver, {
        "text_side_weights": [0.0], "lambdas": [100.0], "regularisers": ["ease"], "whitening": [False],
        "pop_weights": [0.0], "text_matches": ["user_profile", "user_profile_recent"]})
    return RankingConfig(shared).override("bert_rs", solver=solver, text_weights=[0.0, 1.0, 4.0], **solver_section)


def test_bert_rs_chooses_one_review_behind_is_tested_with_the_whole_profiles_and_ranks_test_better(
        torch_single_thread):
    data, profiles = adjacent_world()
    config = small_grid(refit=True)
    spec = RunSpec(model="bert_rs", embeddings="synthetic")
    lagged = train(spec, config, data, profiles, progress=False)
    whole = train(spec, config, data, dataclasses.replace(profiles, lagged=None), progress=False)
    assert lagged.chosen_with_profiles == LAGGED_PROFILES
    assert whole.chosen_with_profiles == WHOLE_PROFILES
    # the whole recent profile points at the validation item's topic: it is trusted, and test pays for it
    assert whole.model.choices()["text_match"] == "user_profile_recent" and whole.model.choices()["text_weight"] > 0
    assert lagged.model.choices() != whole.model.choices()
    # every validation number is the lagged one: the same as a run whose only profiles are the lagged ones
    as_lagged = train(spec, small_grid(refit=False), data, profiles.lagged, progress=False)
    assert lagged.model.choices() == as_lagged.model.choices() and lagged.best_valid == as_lagged.best_valid
    # the final model reads the whole training profiles, as every test-time reader rebuilds them from the cache
    torch.testing.assert_close(lagged.model.raw_u, centred_units(profiles.users))
    torch.testing.assert_close(lagged.model.raw_recent, centred_units(profiles.recent_users))
    ndcg = {name: evaluate(r.model, data, "test", ks=[10], protocols=["full"])["full"]["ndcg@10"]
            for name, r in (("lagged", lagged), ("whole", whole))}
    assert ndcg["lagged"] > ndcg["whole"] + 0.05, ndcg


def test_without_a_final_fit_nothing_lags(torch_single_thread):
    data, profiles = adjacent_world()
    config = small_grid(refit=False)
    spec = RunSpec(model="bert_rs", embeddings="synthetic")
    given = train(spec, config, data, profiles, progress=False)
    whole = train(spec, config, data, dataclasses.replace(profiles, lagged=None), progress=False)
    assert given.chosen_with_profiles == WHOLE_PROFILES
    assert given.model.choices() == whole.model.choices()
    torch.testing.assert_close(given.model.raw_u, centred_units(profiles.users))


def test_the_scalable_solver_also_chooses_one_review_behind_and_is_tested_with_the_whole_profiles(
        torch_single_thread):
    data, profiles = adjacent_world()
    spec = RunSpec(model="bert_rs", embeddings="synthetic")
    lagged = train(spec, small_grid(refit=True, solver="scalable"), data, profiles, progress=False)
    # the same choice as a model whose only profiles are the lagged ones; not the whole profiles' choice
    as_lagged = train(spec, small_grid(refit=False, solver="scalable"), data, profiles.lagged, progress=False)
    as_whole = train(spec, small_grid(refit=False, solver="scalable"), data, dataclasses.replace(profiles, lagged=None),
                     progress=False)
    assert lagged.selection.setting == as_lagged.selection.setting != as_whole.selection.setting
    torch.testing.assert_close(lagged.model.unit_u, centred_units(profiles.users))


def test_train_loads_the_lagged_view_only_for_a_leave_one_out_final_fit(ranking_env):
    loo = dataclasses.replace(ranking_env.data, stats={"protocol": "leave_one_out"})
    section = BertRSConfig(solver="dense")
    chosen = load_model_profiles(ranking_env.cache, loo, section, TrainConfig(), choosing=True)
    reloaded = load_model_profiles(ranking_env.cache, loo, section, TrainConfig())  # a checkpoint reload: no choice
    assert chosen.lagged is not None and reloaded.lagged is None
    np.testing.assert_array_equal(chosen.users, reloaded.users)
    # the fixture's training reviews have times 0..n-1 in row order: each user's last training row is the newest
    users, _ = ranking_env.world.splits["train"]
    vectors = ranking_env.world.review_vectors["train"]
    newest = newest_of_each_user(users, np.arange(len(users)))
    expected = weighted_user_means(users[~newest], vectors[~newest], np.ones(int((~newest).sum())), loo.n_users)
    np.testing.assert_allclose(chosen.lagged.users, expected, rtol=1e-5, atol=1e-6)


def test_a_neural_text_model_chooses_its_epochs_one_review_behind_and_is_refitted_with_the_whole_profiles(
        torch_single_thread, monkeypatch):
    """Like for like with bert_rs: "best text model by validation" compares choices made on the same profiles."""
    data, profiles = adjacent_world()
    spec = RunSpec(model="semantic_only", embeddings="synthetic")

    def config(refit: bool) -> RankingConfig:
        shared = TrainConfig(device="cpu", seed=0, refit_with_validation=refit)
        return RankingConfig(shared).override("semantic_only", epochs=4, patience=4, factors=8, mlp_layers=[16, 8])

    built = []
    build = train_module.build_model
    monkeypatch.setattr(train_module, "build_model", lambda *args: built.append(args[4]) or build(*args))
    result = train(spec, config(refit=True), data, profiles, progress=False)
    assert result.chosen_with_profiles == LAGGED_PROFILES and result.fitted_on == "train+valid"
    # built once for the epochs' fit, with the lagged profiles, then once for the final fit, with the whole ones
    assert len(built) == 2 and built[0] is profiles.lagged and built[1] is profiles
    as_lagged = train(spec, config(refit=False), data, profiles.lagged, progress=False)
    assert (result.best_epoch, result.best_valid) == (as_lagged.best_epoch, as_lagged.best_valid)
