"""Fusion forms beyond the literal eq. 8 (issue 7): projected semantic branch, text-similarity feature, and the
default bert_rs (EASE with review vectors as side information plus a text match).

Each form is checked against its formula computed by hand, and on the planted world the text signal must help
and the shuffled-profile ablation must lose the gain.
"""

import dataclasses

import numpy as np
import pytest
import torch

from pipeline.config import RunSpec
from pipeline.ranking.evaluation.evaluate import evaluate
from pipeline.ranking.models.baselines import EASE
from pipeline.ranking.models.review_ease import ReviewAwareEASE, standardise
from pipeline.ranking.models.fusion import FusionRanker
from pipeline.ranking.registry import build_model
from pipeline.ranking.training.train import train
from pipeline.ranking.selection.spaces import ReviewAwareSpace
from tests.ranking_fixtures import N_ITEMS, N_USERS, replace_config, tiny_profiles

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def fused(form: str, similarity: bool, branches: tuple[str, ...] = ("semantic", "gmf", "mlp")) -> FusionRanker:
    torch.manual_seed(0)
    return FusionRanker(branches, N_USERS, N_ITEMS, factors=4, mlp_layers=[8, 6, 4], profiles=tiny_profiles(),
                        semantic_form=form, text_similarity=similarity)


def centred():
    prof = tiny_profiles()
    return prof.users - prof.users.mean(0), prof.items - prof.items.mean(0)


def test_projected_semantic_branch_by_hand():
    model = fused("projected", False)
    b_u, b_i = centred()
    u, i = 2, 9
    a = model.branches["semantic"].proj_user.weight.detach().numpy()  # (factors, dim)
    b = model.branches["semantic"].proj_item.weight.detach().numpy()
    expected = (a @ b_u[u]) * (b @ b_i[i])  # l_s = (A b_u) (.) (B b_i), on centred profiles
    got = model.branches["semantic"](torch.tensor([u]), torch.tensor([i]))[0].detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert got.shape == (4,)  # the predictive-factor size, not the encoder's


def test_similarity_feature_is_the_cosine_of_centred_profiles():
    model = fused("projected", True)
    b_u, b_i = centred()
    u, i = 5, 1
    expected = b_u[u] @ b_i[i] / (np.linalg.norm(b_u[u]) * np.linalg.norm(b_i[i]))
    got = model.branches["similarity"](torch.tensor([u]), torch.tensor([i])).item()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert list(model.branch_vectors(torch.tensor([u]), torch.tensor([i]))) == ["semantic", "similarity", "gmf", "mlp"]


@pytest.mark.parametrize("form, similarity", [("paper", True), ("projected", False), ("projected", True)])
def test_every_form_scores_all_items_like_pairwise_forward_and_explains_itself(form, similarity):
    model = fused(form, similarity)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    users = torch.arange(N_USERS)
    pairs_u, pairs_i = users.repeat_interleave(N_ITEMS), torch.arange(N_ITEMS).repeat(N_USERS)
    expected = model(pairs_u, pairs_i).reshape(N_USERS, N_ITEMS)
    torch.testing.assert_close(model.score_all(users), expected, rtol=1e-5, atol=1e-5)
    parts = model.score_parts(pairs_u, pairs_i)
    torch.testing.assert_close(sum(parts.values()), model(pairs_u, pairs_i), rtol=1e-5, atol=1e-5)


def test_user_id_dropout_drops_whole_user_rows_in_training_only():
    torch.manual_seed(0)
    model = FusionRanker(("semantic", "gmf", "mlp"), N_USERS, N_ITEMS, factors=4, mlp_layers=[8, 6, 4],
                         profiles=tiny_profiles(), semantic_form="projected", text_similarity=True,
                         user_id_dropout=0.5)
    users, items = torch.arange(N_USERS).repeat(20), torch.arange(N_ITEMS).repeat(20)[: N_USERS * 20]
    model.train()
    keep = model.user_id_keep(users)
    assert set(keep.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and scaled by 1 / (1 - p)
    model.eval()
    assert model.user_id_keep(users) == 1.0
    eval_scores = model(users, items)
    torch.testing.assert_close(model.score_all(torch.arange(N_USERS))[users, items], eval_scores)
    model.train()
    torch.manual_seed(1)
    keep = model.user_id_keep(users)
    torch.manual_seed(1)
    vectors = model.branch_vectors(users, items)
    dropped = (keep[:, 0] == 0)
    without_user = model.branches["gmf"](users, items, 0.0)
    torch.testing.assert_close(vectors["gmf"][dropped], without_user[dropped])
    # the text branch is untouched
    torch.testing.assert_close(vectors["semantic"], model.branches["semantic"](users, items))
    with pytest.raises(ValueError, match="user_id_dropout"):
        FusionRanker(("gmf", "mlp"), N_USERS, N_ITEMS, user_id_dropout=1.0)


def test_user_id_dropout_reaches_the_neural_text_head_only(ranking_env):
    config = ranking_env.config.override("bert_rs_neural", user_id_dropout=0.3)  # (semantic_only refuses it)
    data, profiles = ranking_env.data, ranking_env.profiles()
    for model, expected in (("bert_rs_neural", 0.3), ("bert_rs_paper", 0.0), ("neumf", 0.0), ("gmf", 0.0)):
        built = build_model(RunSpec(model=model, embeddings="x" if "bert" in model else None), config, data.n_users,
                            data.n_items, profiles)
        assert built.user_id_dropout == expected, model


def test_bert_rs_paper_stays_literal_whatever_the_configuration(ranking_env):
    data = ranking_env.data
    model = build_model(RunSpec(model="bert_rs_paper", embeddings="x"), ranking_env.config, data.n_users,
                        data.n_items, ranking_env.profiles())
    assert model.semantic_form == "paper" and "similarity" not in model.branches
    literal = FusionRanker(("semantic",), N_USERS, N_ITEMS, profiles=tiny_profiles(), semantic_form="projected",
                           text_similarity=True, literal_paper=True)
    assert literal.semantic_form == "paper" and "similarity" not in literal.branches
    assert literal.widths["semantic"] == tiny_profiles().dim


def unit_rows(a: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def small_fit(side=(0.0,), matches=("user_profile",), weights=(0.0,)):
    rng = np.random.default_rng(0)
    x = np.zeros((N_USERS, N_ITEMS))
    x[rng.integers(0, N_USERS, 40), rng.integers(0, N_ITEMS, 40)] = 1.0
    model = ReviewAwareEASE(N_USERS, N_ITEMS, tiny_profiles(),
                            ReviewAwareSpace(lambdas=[1.0], side_weights=side, matches=matches,
                                             text_weights=weights)).fit(*np.nonzero(x))
    return model, x


def test_bert_rs_without_text_is_ease():
    model, _ = small_fit()
    everyone = torch.arange(N_USERS)
    torch.testing.assert_close(model.score_all(everyone), standardise(model.ease.score_all(everyone)))


def test_side_information_acts_as_review_vectors_stacked_under_the_interactions():
    model, x = small_fit()
    model.solve(2.0)
    f = unit_rows(tiny_profiles().items)
    m = np.diag(x.T @ x).mean()  # mean training interactions per item
    stacked = np.vstack([x, np.sqrt(2.0 * m) * f.T])  # the review vectors as extra pseudo-users
    p = np.linalg.inv(stacked.T @ stacked + 1.0 * np.eye(N_ITEMS))
    expected = -p / np.diag(p)[None, :]
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(model.ease.B.numpy(), expected, rtol=1e-4, atol=1e-5)
    model.solve(0.0)
    torch.testing.assert_close(model.ease.B, EASE(N_USERS, N_ITEMS, 1.0).fit(*np.nonzero(x)).B)


def test_item_neighbour_match_sums_the_text_similarity_of_the_users_other_items():
    model, x = small_fit(matches=("item_neighbours",))
    f = unit_rows(tiny_profiles().items)
    u = int(np.argmax(x.sum(1)))
    expected = [sum(f[j] @ f[i] for j in np.flatnonzero(x[u]) if j != i) for i in range(N_ITEMS)]
    np.testing.assert_allclose(model.text_scores(torch.tensor([u]))[0].numpy(), expected, rtol=1e-4, atol=1e-5)


def test_user_profile_match_is_the_cosine_of_centred_profiles():
    model, _ = small_fit(matches=("user_profile",))
    expected = unit_rows(tiny_profiles().users) @ unit_rows(tiny_profiles().items).T
    np.testing.assert_allclose(model.text_scores(torch.arange(N_USERS)).numpy(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("match", ["item_neighbours", "user_profile"])
def test_bert_rs_score_is_the_standardised_item_model_plus_weighted_text_and_popularity_and_parts_add_up(match):
    model, x = small_fit(matches=(match,))
    model.solve(1.0)
    model.text_weight, model.pop_weight = torch.tensor(0.7), torch.tensor(0.3)
    everyone, first = torch.arange(N_USERS), torch.zeros(N_USERS, dtype=torch.long)
    popularity = standardise(torch.log1p(torch.tensor(x.sum(0), dtype=torch.float32))[None, :])
    expected = (standardise(model.ease.score_all(everyone)) + 0.7 * standardise(model.text_scores(everyone))
                + 0.3 * popularity)
    torch.testing.assert_close(model.score_all(everyone), expected)
    parts = model.score_parts(everyone, first)
    assert set(parts) == {"item_model", "text_match", "popularity"}
    torch.testing.assert_close(sum(parts.values()), model.score(everyone, first))


def test_unknown_text_match_is_refused():
    with pytest.raises(ValueError, match="text matches"):
        ReviewAwareEASE(N_USERS, N_ITEMS, tiny_profiles(), ReviewAwareSpace(lambdas=[1.0], matches=("review_title",)))


def text_gain_and_ablation(ranking_env, config, baseline: RunSpec, text: RunSpec, protocol: str) -> dict:
    """Test NDCG@10 of a non-text baseline, a text model and the same text model on shuffled profiles."""
    data, profiles = ranking_env.data, ranking_env.profiles()
    runs = {"baseline": baseline, "text": text, "shuffled": dataclasses.replace(text, shuffle=True)}
    out = {}
    for name, spec in runs.items():
        result = train(spec, config, data, profiles, progress=False)
        out[name] = evaluate(result.model, data, "test", ks=[10], protocols=[protocol])[protocol]["ndcg@10"]
        out[f"{name}_model"] = result.model
    return out


def best_on_validation(ranking_env, config) -> dict:
    """Score every grid point on its own (one-point grids) by full-ranking validation NDCG@10; the first best wins."""
    data, profiles = ranking_env.data, ranking_env.profiles()
    spec = RunSpec(model="bert_rs", embeddings="x")
    best, best_ndcg = None, -1.0
    grids = config.section("bert_rs")
    for side in grids.dense.text_side_weights:
        for match in grids.dense.text_matches:
            for w in grids.text_weights:
                if w == 0.0 and match != grids.dense.text_matches[0]:
                    continue  # w = 0 ignores the match
                one = replace_config(config, "bert_rs", text_side_weights=[side], text_matches=[match],
                                     text_weights=[w])
                model = train(spec, one, data, profiles, progress=False).model
                ndcg = evaluate(model, data, "valid", ks=[10], protocols=["full"])["full"]["ndcg@10"]
                if ndcg > best_ndcg:
                    best, best_ndcg = settings(model), ndcg
    return best


def settings(model) -> dict:
    """A bert_rs model's choices without the count of looks that led to them."""
    return {k: v for k, v in model.choices().items() if k != "validation_looks"}


def test_bert_rs_picks_its_text_knobs_on_validation_and_the_text_signal_is_real(ranking_env):
    # the three text grids searched here; lambda, regulariser, whitening and popularity are held at one value each
    # (their search is specified in tests/test_review_ease.py)
    config = replace_config(ranking_env.config, "bert_rs", text_side_weights=[0.0, 1.0],
                            text_weights=[0.0, 0.5, 1.0, 2.0],
                            text_matches=["item_neighbours", "user_profile"],
                            lambdas=ranking_env.config.section("ease").lambdas, regularisers=["ease"],
                            whitening=[False], pop_weights=[0.0]).override(choice_rule="best")
    ndcg = text_gain_and_ablation(ranking_env, config, RunSpec(model="ease"),
                                  RunSpec(model="bert_rs", embeddings="x"), "full")
    chosen = settings(ndcg["text_model"])
    assert chosen == best_on_validation(ranking_env, config)  # the grid point that scores best, found independently
    assert chosen["side_weight"] > 0 or chosen["text_weight"] > 0  # the planted text signal is worth using
    gain = ndcg["text"] - ndcg["baseline"]
    assert gain > 0.01, ndcg
    assert ndcg["shuffled"] - ndcg["baseline"] < 0.5 * gain, ndcg


def test_bert_rs_choices_never_read_the_test_split(ranking_env):
    data, profiles = ranking_env.data, ranking_env.profiles()
    config = replace_config(ranking_env.config, "bert_rs", text_side_weights=[0.0, 1.0], text_weights=[0.0, 1.0])
    spec = RunSpec(model="bert_rs", embeddings="x")
    seen = train(spec, config, data, profiles, progress=False).model.choices()
    empty = dataclasses.replace(data.test, users=data.test.users[:0], items=data.test.items[:0])
    blind = dataclasses.replace(data, test=empty, candidates={"valid": data.candidates["valid"]})
    assert train(spec, config, blind, profiles, progress=False).model.choices() == seen


def test_projected_bert_rs_neural_uses_the_text_signal(ranking_env):
    config = replace_config(ranking_env.config, semantic_form="projected", text_similarity=True)
    ndcg = text_gain_and_ablation(ranking_env, config, RunSpec(model="neumf"),
                                  RunSpec(model="bert_rs_neural", embeddings="x"), "sampled")
    gain = ndcg["text"] - ndcg["baseline"]
    assert gain > 0.05, ndcg
    assert ndcg["shuffled"] - ndcg["baseline"] < 0.5 * gain, ndcg


def test_checkpoint_of_a_hybrid_keeps_its_chosen_weight(ranking_env, tmp_path):
    from pipeline.ranking.checkpoint import load_checkpoint, save_checkpoint

    data, profiles = ranking_env.data, ranking_env.profiles()
    spec = RunSpec(model="bert_rs", embeddings="x")
    result = train(spec, ranking_env.config, data, profiles, progress=False)
    save_checkpoint(tmp_path / "m", result, spec, ranking_env.config, data, profiles, ranking_env.cache)
    loaded = load_checkpoint(tmp_path / "m", data)
    assert loaded.model.choices() == result.model.choices() == loaded.info["chosen"]  # also readable in run.json
    # and how it was chosen: the looks, the score and the guard's cross-fitted gain, as the selector measured them
    assert loaded.info["selection"] == result.selection.summary()
    assert loaded.info["selection"]["validation_looks"] == result.model.choices()["validation_looks"]
    assert loaded.info["selection"]["valid_ndcg@10"] == pytest.approx(result.best_valid["ndcg@10"], abs=1e-6)
    users = torch.arange(data.n_users)
    torch.testing.assert_close(loaded.model.score_all(users), result.model.score_all(users))
