"""The recency-weighted user profile and bert_rs's `user_profile_recent` text match:

- a training review weighs 0.5 per newer review of the same user, equal times share a weight;
- the profile streamed from a cache equals that weighted mean of the user's training reviews (unit length where the
  cache's profiles are), and a cache whose reviews are not the prepared data's (in its order) is refused, naming
  the file;
- the match is the cosine of the centred recent profile and the centred item profile;
- the shuffled ablation moves a user's recent profile with their mean profile;
- where users' taste moves, the search picks the recent profile and it ranks the next item better;
- a checkpoint that chose it scores the same after reloading (the profile is rebuilt from the cache).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.config import RunSpec
from pipeline.embeddings.cache import REVIEWS_FILE, Profiles, reviews_schema, vectors_to_arrow
from pipeline.embeddings.recency import with_recent_users
from pipeline.embeddings.profiles import mean_profiles, recency_weights, weighted_user_means
from pipeline.io import DataError
from pipeline.ranking.evaluation.ablation import shuffle_profiles
from pipeline.ranking.evaluation.evaluate import full_ranking_mask, rank_full
from pipeline.ranking.models.review_ease import ReviewAwareEASE, whitened_units
from pipeline.ranking.evaluation.metrics import metrics_from_ranks
from pipeline.ranking.selection.select import select
from pipeline.ranking.training.train import train
from pipeline.ranking.selection.spaces import ReviewAwareSpace
from tests.ranking_fixtures import in_memory_data


def test_a_review_weighs_half_per_newer_review_of_its_user_and_equal_times_share_a_weight():
    users = np.array([0, 0, 0, 0, 1, 1])
    times = np.array([10, 30, 30, 20, 5, 1])
    # user 0: two newest (30) weigh 1, then 20 has 2 newer -> 1/4, then 10 has 3 newer -> 1/8; user 1: 1, 1/2
    np.testing.assert_allclose(recency_weights(users, times), [1 / 8, 1, 1, 1 / 4, 1, 1 / 2])
    np.testing.assert_allclose(recency_weights(users, times, half_life=2.0), 0.5 ** (np.array([3, 0, 0, 2, 0, 1]) / 2))
    # a dump whose times are all equal gives every review the same weight: the plain mean profile
    np.testing.assert_allclose(recency_weights(users, np.zeros(6, dtype=np.int64)), np.ones(6))


def write_review_cache(root, ids, users, splits, vectors, row_group_size=2):
    root.mkdir(parents=True, exist_ok=True)
    table = pa.table({"review_id": np.asarray(ids, dtype=np.int64), "user_idx": np.asarray(users, dtype=np.int32),
                      "item_idx": np.zeros(len(ids), dtype=np.int32), "split": splits,
                      "embedding": vectors_to_arrow(vectors)}, schema=reviews_schema(vectors.shape[1]))
    pq.write_table(table, root / REVIEWS_FILE, row_group_size=row_group_size)


def test_the_streamed_recent_profile_is_the_recency_weighted_mean_of_the_users_training_reviews(tmp_path):
    rng = np.random.default_rng(0)
    users = np.array([0, 1, 0, 0, 1, 2, 0])
    times = np.array([1, 5, 3, 9, 2, 4, 7])
    splits = ["train", "train", "train", "test", "train", "valid", "train"]
    vectors = rng.normal(size=(7, 3)).astype(np.float32)
    write_review_cache(tmp_path, np.arange(7) + 100, users, splits, vectors)
    reviews = pa.table({"review_id": np.arange(7) + 100, "user_idx": users, "time": times, "split": splits})
    profiles = Profiles(np.zeros((3, 3), np.float32), np.zeros((1, 3), np.float32), np.ones(3, bool),
                        np.ones(1, bool), {"dim": 3})

    recent = with_recent_users(profiles, tmp_path, reviews).recent_users

    # user 0's training reviews at times 1, 3, 7 (the test review at 9 neither counts nor pushes them down)
    expected_0 = (vectors[6] * 1 + vectors[2] * 0.5 + vectors[0] * 0.25) / 1.75
    expected_1 = (vectors[1] * 1 + vectors[4] * 0.5) / 1.5
    np.testing.assert_allclose(recent[0], expected_0, rtol=1e-5)
    np.testing.assert_allclose(recent[1], expected_1, rtol=1e-5)
    # user 2 has no training review: the recency-weighted mean of everyone's training reviews
    np.testing.assert_allclose(recent[2], (expected_0 * 1.75 + expected_1 * 1.5) / 3.25, rtol=1e-5)
    # the in-memory form the benchmarks use gives the same profiles
    in_memory = mean_profiles(users, np.zeros(7, dtype=np.int64), np.array(splits), vectors, 3, 1, times=times)
    np.testing.assert_allclose(in_memory.recent_users, recent, rtol=1e-5)

    cache_file = str(tmp_path / REVIEWS_FILE)
    for wrong in (reviews.take(pa.array([1, 0, 2, 3, 4, 5, 6])),  # another order
                  reviews.slice(0, 6),  # the cache has a review the prepared data lacks
                  pa.concat_tables([reviews, reviews.slice(0, 1)])):  # the prepared data has one more
        with pytest.raises(DataError, match=f"{cache_file}: .*(differ|the prepared data has)"):
            with_recent_users(profiles, tmp_path, wrong)


def test_a_normalised_cache_gets_unit_length_recent_profiles(tmp_path):
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(4, 3)).astype(np.float32) * 5
    write_review_cache(tmp_path, np.arange(4), [0, 0, 1, 1], ["train"] * 4, vectors)
    reviews = pa.table({"review_id": np.arange(4), "user_idx": [0, 0, 1, 1], "time": [1, 2, 1, 2],
                        "split": ["train"] * 4})
    profiles = Profiles(np.zeros((2, 3), np.float32), np.zeros((1, 3), np.float32), np.ones(2, bool),
                        np.ones(1, bool), {"dim": 3, "normalize_profiles": True})
    recent = with_recent_users(profiles, tmp_path, reviews).recent_users
    np.testing.assert_allclose(np.linalg.norm(recent, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(recent[0],
                               (vectors[1] + 0.5 * vectors[0]) / np.linalg.norm(vectors[1] + 0.5 * vectors[0]),
                               rtol=1e-5)


def test_the_recent_match_is_the_cosine_of_the_centred_recent_and_item_profiles():
    rng = np.random.default_rng(1)
    profiles = Profiles(rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(6, 4)).astype(np.float32),
                        np.ones(5, bool), np.ones(6, bool), {}, rng.normal(size=(5, 4)).astype(np.float32))
    model = ReviewAwareEASE(5, 6, profiles,
                            ReviewAwareSpace(lambdas=[10.0], matches=["user_profile", "user_profile_recent"]))
    scores = model.text_scores(torch.arange(5), "user_profile_recent", whiten=False)
    recent = profiles.recent_users - profiles.recent_users.mean(0)
    items = profiles.items - profiles.items.mean(0)
    expected = (recent / np.linalg.norm(recent, axis=1, keepdims=True)) @ (
        items / np.linalg.norm(items, axis=1, keepdims=True)).T
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(model.text_scores(torch.arange(5), "user_profile", whiten=False).numpy(), expected)
    # whitened: the recent profiles through the same whitening as the mean profiles (fitted on the items)
    white_recent, white_items = whitened_units(profiles, profiles.recent_users)
    torch.testing.assert_close(model.text_scores(torch.arange(5), "user_profile_recent", whiten=True),
                               white_recent @ white_items.T)
    assert not torch.allclose(model.text_scores(torch.arange(5), "user_profile", whiten=True),
                              white_recent @ white_items.T)
    with pytest.raises(ValueError, match="user_profile_recent"):
        ReviewAwareEASE(5, 6, dataclasses.replace(profiles, recent_users=None),
                        ReviewAwareSpace(lambdas=[10.0], matches=["user_profile_recent"]))
    without = ReviewAwareEASE(5, 6, dataclasses.replace(profiles, recent_users=None),
                              ReviewAwareSpace(lambdas=[10.0], matches=["user_profile"]))
    with pytest.raises(ValueError, match="recency-weighted"):
        without.text_scores(torch.arange(5), "user_profile_recent", whiten=False)


def test_the_shuffled_ablation_moves_a_users_recent_profile_with_their_mean_profile():
    rng = np.random.default_rng(2)
    users = rng.normal(size=(9, 3)).astype(np.float32)
    profiles = Profiles(users, rng.normal(size=(4, 3)).astype(np.float32), np.ones(9, bool), np.ones(4, bool), {},
                        users + 100.0)
    shuffled = shuffle_profiles(profiles, seed=0)
    assert not np.array_equal(shuffled.users, profiles.users)
    np.testing.assert_allclose(shuffled.recent_users, shuffled.users + 100.0)


def drifting_world(seed: int = 0, n_users: int = 120, n_topics: int = 6, per_topic: int = 8):
    """Each user reviewed three items of an old topic, then one of a new topic; the next items (validation, test)
    come from the new topic. Review vectors are their item's topic vector plus noise."""
    rng = np.random.default_rng(seed)
    n_items = n_topics * per_topic
    item_topic = np.repeat(np.arange(n_topics), per_topic)
    topic_vectors = rng.normal(size=(n_topics, 8))
    item_vectors = topic_vectors[item_topic] + 0.3 * rng.normal(size=(n_items, 8))
    old, new = rng.integers(n_topics, size=n_users), rng.integers(n_topics, size=n_users)
    new = np.where(new == old, (new + 1) % n_topics, new)
    rows = {"train": ([], [], []), "valid": ([], []), "test": ([], [])}
    for u in range(n_users):
        olds = rng.choice(np.flatnonzero(item_topic == old[u]), 3, replace=False)
        news = rng.choice(np.flatnonzero(item_topic == new[u]), 3, replace=False)
        for t, i in enumerate([*olds, news[0]]):
            rows["train"][0].append(u), rows["train"][1].append(int(i)), rows["train"][2].append(t)
        for split, i in (("valid", news[1]), ("test", news[2])):
            rows[split][0].append(u), rows[split][1].append(int(i))
    users, items, times = (np.asarray(x) for x in rows["train"])
    review_vectors = item_vectors[items] + 0.3 * rng.normal(size=(len(items), 8))
    item_profiles = np.stack([review_vectors[items == i].mean(0) if (items == i).any() else item_vectors[i]
                              for i in range(n_items)])
    profiles = Profiles(
        weighted_user_means(users, review_vectors, np.ones(len(users)), n_users),
        item_profiles.astype(np.float32), np.ones(n_users, bool), np.ones(n_items, bool), {},
        weighted_user_means(users, review_vectors, recency_weights(users, times), n_users))
    data = in_memory_data(n_users, n_items, (users, items), rows["valid"], rows["test"])
    return data, profiles


def test_when_taste_moves_the_search_picks_the_recent_profile_and_ranks_the_next_item_better():
    data, profiles = drifting_world()

    def fitted(matches):
        model = ReviewAwareEASE(data.n_users, data.n_items, profiles,
                                ReviewAwareSpace(lambdas=[100.0], side_weights=[0.0], matches=matches,
                                                 text_weights=[0.0, 1.0, 4.0]))
        model.fit(data.train.users, data.train.items)
        select(model, data)
        return model

    def test_ndcg(model):
        return metrics_from_ranks(rank_full(model, data.test, full_ranking_mask(data, "test")).ranks, [10])["ndcg@10"]

    both = fitted(["user_profile", "user_profile_recent"])
    assert both.choices()["text_match"] == "user_profile_recent" and both.choices()["text_weight"] > 0
    assert test_ndcg(both) > test_ndcg(fitted(["user_profile"])) + 0.05


def test_a_checkpoint_that_chose_the_recent_match_scores_the_same_after_reloading(ranking_env, tmp_path):
    from pipeline.ranking.checkpoint import load_checkpoint, save_checkpoint

    data, profiles = ranking_env.data, ranking_env.profiles()
    config = ranking_env.config.override("bert_rs", text_side_weights=[0.0], text_matches=["user_profile_recent"],
                                         text_weights=[1.0], lambdas=[100.0], pop_weights=[0.0], whitening=[False],
                                         regularisers=["ease"])
    spec = RunSpec(model="bert_rs", embeddings="x")
    result = train(spec, config, data, profiles, progress=False)
    assert result.model.choices()["text_match"] == "user_profile_recent"
    save_checkpoint(tmp_path / "m", result, spec, config, data, profiles, ranking_env.cache)
    loaded = load_checkpoint(tmp_path / "m", data)
    users = torch.arange(data.n_users)
    torch.testing.assert_close(loaded.model.score_all(users), result.model.score_all(users))
    assert not np.allclose(loaded.profiles.recent_users, loaded.profiles.users)
