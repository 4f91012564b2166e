"""Recommendations: never a known item, explained by score parts, unknown users refused, cold users served."""

import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import typer
from typer.testing import CliRunner

from pipeline.io import DataError
from pipeline.ranking.checkpoint import save_checkpoint
from pipeline.ranking.recommend import known_pairs, popular_items, read_index, recommend, top_k, user_indices
from tests.ranking_fixtures import write_train_params


pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.mark.parametrize("name", ["bert_rs_neural", "neumf"])
def test_never_recommends_a_known_item_and_parts_explain_the_score(ranking_env, trained_runs, name):
    data, profiles = ranking_env.data, ranking_env.profiles()
    model = trained_runs[name][1].model
    index = read_index(ranking_env.cache) if name == "bert_rs_neural" else None
    users = np.arange(data.n_users)
    recs = recommend(model, data, users, k=10, candidates=50, popular_fallback=20, profiles=profiles, index=index)
    assert recs.num_rows == 10 * data.n_users
    u, i = recs.column("user_idx").to_numpy(), recs.column("item_idx").to_numpy()
    assert not known_pairs(data).contains(u, i).any()
    parts = sum(recs.column(c).to_numpy() for c in recs.column_names if c.startswith("part_"))
    np.testing.assert_allclose(parts, recs.column("score").to_numpy(), rtol=1e-4, atol=1e-4)
    scores = recs.column("score").to_numpy().reshape(data.n_users, 10)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    if name == "bert_rs_neural":
        assert {"part_semantic", "part_gmf", "part_mlp", "part_bias"} <= set(recs.column_names)


def test_a_model_that_reads_profiles_picks_among_the_items_nearest_the_users_profile(ranking_env, trained_runs):
    """The FAISS pool is what a request ranks: without a popular fallback, each pick of a user whose pool holds k
    new items is one of the `candidates` items whose profiles are nearest the user's (cosine, by brute force here),
    although scoring the whole catalogue would pick others."""
    data, profiles = ranking_env.data, ranking_env.profiles()
    model = trained_runs["bert_rs_neural"][1].model
    users, k, candidates = np.arange(data.n_users), 5, 30
    recs = recommend(model, data, users, k=k, candidates=candidates, popular_fallback=0, profiles=profiles,
                     index=read_index(ranking_env.cache))
    picks = recs.column("item_idx").to_numpy().reshape(len(users), k)
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    cosine = unit(profiles.users) @ unit(profiles.items).T
    threshold = np.sort(cosine, axis=1)[:, -candidates][:, None] - 1e-5  # the candidates-th nearest
    known = known_pairs(data).dense_mask(users).numpy()
    full_pool = ((cosine >= threshold) & ~known).sum(axis=1) >= k
    assert full_pool.sum() > len(users) // 2
    picked_cosine = np.take_along_axis(cosine, picks, axis=1)
    assert (picked_cosine[full_pool] >= threshold[full_pool]).all()
    whole = model.score_all(torch.as_tensor(users)).masked_fill(known_pairs(data).dense_mask(users), -torch.inf)
    whole_picks = whole.topk(k, dim=1).indices.numpy()
    assert (np.take_along_axis(cosine, whole_picks, axis=1)[full_pool] < threshold[full_pool]).any()


def test_default_bert_rs_recommends_the_top_of_its_whole_catalogue_ranking(ranking_env, trained_runs):
    """Its collaborative picks need not be near the user's profile, so FAISS candidates must not cut them off."""
    data, profiles = ranking_env.data, ranking_env.profiles()
    model = trained_runs["bert_rs"][1].model
    users = np.arange(data.n_users)
    recs = recommend(model, data, users, k=5, candidates=2, popular_fallback=1, profiles=profiles,
                     index=read_index(ranking_env.cache))
    full = model.score_all(torch.as_tensor(users)).masked_fill(known_pairs(data).dense_mask(users), -torch.inf)
    expected = full.topk(5, dim=1).values.numpy()
    np.testing.assert_allclose(recs.column("score").to_numpy().reshape(data.n_users, 5), expected, rtol=1e-5)
    parts = sum(recs.column(f"part_{name}").to_numpy() for name in ("item_model", "text_match", "popularity"))
    np.testing.assert_allclose(parts, recs.column("score").to_numpy(), rtol=1e-4, atol=1e-4)


def test_bert_rs_scores_a_users_catalogue_once_and_ranks_by_exactly_the_parts_it_shows(
        ranking_env, trained_runs, monkeypatch):
    """One request is one pass over the catalogue: the parts shown are the numbers the pick was ranked by, not a
    second computation that merely agrees with them."""
    data, profiles = ranking_env.data, ranking_env.profiles()
    model = trained_runs["bert_rs"][1].model
    passes = []
    whole_catalogue = model.ease.score_all
    monkeypatch.setattr(model.ease, "score_all", lambda users: passes.append(len(users)) or whole_catalogue(users))
    known = known_pairs(data)
    picks = top_k(model, np.array([3]), 5, known, popular_items(data, 10), profiles=profiles,
                  index=read_index(ranking_env.cache))
    assert passes == [1]
    # float32, added in the order the model adds them
    total = picks.parts["item_model"] + picks.parts["text_match"] + picks.parts["popularity"]
    np.testing.assert_array_equal(total, picks.scores.astype(np.float32))
    full = model.score_all(torch.as_tensor([3])).masked_fill(known.dense_mask(np.array([3])), -torch.inf)
    np.testing.assert_array_equal(picks.items, full.topk(5, dim=1).indices.numpy())


def test_unknown_user_is_a_clear_error(ranking_env):
    with pytest.raises(DataError, match="'nobody'"):
        user_indices(ranking_env.data, ["U1", "nobody"])


def test_user_without_training_reviews_still_gets_recommendations(ranking_env, trained_runs):
    data, profiles = ranking_env.data, ranking_env.profiles()
    keep = data.train.users != 0
    cold = dataclasses.replace(data, train=dataclasses.replace(data.train, users=data.train.users[keep],
                                                                 items=data.train.items[keep]))
    fallback = profiles.users.mean(axis=0)
    cold_profiles = dataclasses.replace(profiles, users=profiles.users.copy())
    cold_profiles.users[0] = fallback
    model = trained_runs["bert_rs_neural"][1].model
    recs = recommend(model, cold, np.array([0]), k=5, profiles=cold_profiles, index=read_index(ranking_env.cache))
    assert recs.num_rows == 5
    assert not known_pairs(data).contains(np.zeros(5, int), recs.column("item_idx").to_numpy()).any()


def test_recommend_cli_single_and_batch(ranking_env, trained_runs, tmp_path):
    from stages.recommend import main

    data, profiles = ranking_env.data, ranking_env.profiles()
    spec, result = trained_runs["bert_rs_neural"]
    save_checkpoint(tmp_path / "bert_rs_neural", result, spec, ranking_env.config, data, profiles, ranking_env.cache,
                    "bert_rs_neural")
    app = typer.Typer()
    app.command()(main)
    base = ["--prepared", str(ranking_env.prepared), "--model-dir", str(tmp_path / "bert_rs_neural"),
            "--params", str(write_train_params(tmp_path / "params.yaml"))]
    runner = CliRunner()
    res = runner.invoke(app, base + ["--user", "U3", "--k", "5"])
    assert res.exit_code == 0, res.output
    assert "semantic" in res.output and len(res.output.strip().splitlines()) == 6
    res = runner.invoke(app, base + ["--user", "nobody"])
    assert res.exit_code == 2 and "nobody" in res.output
    users_file = tmp_path / "users.txt"
    users_file.write_text("U1\nU2\n")
    res = runner.invoke(app, base + ["--users-file", str(users_file), "--out", str(tmp_path / "recs.parquet")])
    assert res.exit_code == 0, res.output
    table = pq.read_table(tmp_path / "recs.parquet")
    assert table.num_rows == 20 and set(table.column("user_id").to_pylist()) == {"U1", "U2"}
