"""The low-rank item model (ELSA-style, text-initialised): EASE-like quality on the planted world, the text start
helps, its closed-form standardisation and loss equal the dense forms, its passes are chosen on validation, and
bert_rs switches to it visibly."""

import dataclasses
import json

import pytest
import torch

from pipeline.config import RunSpec
from pipeline.ranking.models.baselines import EASE
from pipeline.ranking.evaluation.evaluate import full_ranking_mask, rank_full
from pipeline.ranking.models.review_ease import standardise
from pipeline.ranking.evaluation.metrics import metrics_from_ranks
from pipeline.ranking.models.scalable import ScalableItemModel, normalised_reconstruction_loss
from pipeline.ranking.checkpoint import load_checkpoint, save_checkpoint
from pipeline.ranking.registry import build_model
from pipeline.ranking.training.train import train, with_validation_in_training


pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_ndcg(model, data, split="test"):
    return metrics_from_ranks(rank_full(model, getattr(data, split), full_ranking_mask(data, split)).ranks,
                              [10])["ndcg@10"]


test_ndcg.__test__ = False  # a helper, not a test


def fitted(env, **kwargs):
    data = env.data
    settings = dict(rank=32, epochs=3, batch_users=64, learning_rate=0.01, seed=0) | kwargs
    return ScalableItemModel(data.n_users, data.n_items, env.profiles(),
                             **settings).fit(data.train.users, data.train.items)


def test_reaches_ease_quality_and_the_text_start_helps(ranking_env):
    data = ranking_env.data
    ease = test_ndcg(EASE(data.n_users, data.n_items, 500.0).fit(data.train.users, data.train.items), data)
    with_text = test_ndcg(fitted(ranking_env, text_init=True), data)
    without = test_ndcg(fitted(ranking_env, text_init=False), data)
    assert with_text > 0.9 * ease, (with_text, ease)
    assert with_text > 2 * without, (with_text, without)  # same steps from a random start: far behind


def test_closed_form_standardisation_equals_standardising_whole_rows(ranking_env):
    model = fitted(ranking_env, epochs=1)
    model.text_weight = torch.tensor(0.5)
    users = torch.arange(0, 40)
    x = model._x(users)
    expected = standardise(x @ model.A @ model.A.T - x) + 0.5 * standardise(model.unit_u[users] @ model.unit_i.T)
    torch.testing.assert_close(model.score_all(users), expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.score_items(users, slice(100, 250)), expected[:, 100:250], rtol=1e-4, atol=1e-4)
    items = torch.randint(0, model.n_items, (40,), generator=torch.Generator().manual_seed(0))
    items[:5] = model.indices[model.indptr[users[:5]]]  # training pairs: the removed diagonal must apply
    torch.testing.assert_close(model.score(users, items), expected[torch.arange(40), items], rtol=1e-4, atol=1e-4)


def test_bert_rs_switches_to_the_scalable_solver_and_run_json_says_so(ranking_env, tmp_path):
    data, profiles = ranking_env.data, ranking_env.profiles()
    config = ranking_env.config.override("bert_rs", solver="scalable", rank=16, epochs=2,
                                         text_weights=[0.0, 0.5])
    spec = RunSpec(model="bert_rs", embeddings="synthetic")
    result = train(spec, config, data, profiles, progress=False)
    assert isinstance(result.model, ScalableItemModel)
    save_checkpoint(tmp_path / "run", result, spec, config, data, profiles, ranking_env.cache)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["bert_rs_solver"] == "scalable" and info["chosen"]["solver"] == "scalable"
    # auto on this machine would pick dense for 600 items; the checkpoint still rebuilds the solver that ran
    auto = config.override("bert_rs", solver="auto")
    save_checkpoint(tmp_path / "auto", result, spec, auto, data, profiles, ranking_env.cache)
    loaded = load_checkpoint(tmp_path / "auto", data)
    assert isinstance(loaded.model, ScalableItemModel)
    assert loaded.model.choices() == info["chosen"] and info["chosen"]["epochs"] == result.best_epoch
    users = torch.arange(20)
    torch.testing.assert_close(loaded.model.score_all(users), result.model.score_all(users))


def test_the_pass_kept_is_the_validation_best_and_training_stops_patience_passes_after_it(ranking_env):
    data = ranking_env.data
    # the first best is pass 3 (pass 4 only ties it); the count of passes without a better one restarts at pass 3
    scripted = iter([0.10, 0.05, 0.30, 0.30, 0.20, 0.50])
    model = ScalableItemModel(data.n_users, data.n_items, ranking_env.profiles(), rank=16, epochs=6, batch_users=64,
                              patience=2, weights=(0.0, 0.5))
    model.text_weight = torch.tensor(0.5)
    seen_weights = []

    def validation():
        seen_weights.append(float(model.text_weight))
        return {"valid_hr@10": 0.0, "valid_ndcg@10": next(scripted)}

    curve, kept = model.fit_on_validation(data.train.users, data.train.items, validation)
    assert kept == 3 and [row["epoch"] for row in curve] == [1, 2, 3, 4, 5]  # pass 6 never trained
    assert [row["valid_ndcg@10"] for row in curve] == [0.10, 0.05, 0.30, 0.30, 0.20]
    assert seen_weights == [0.0] * 5 and float(model.text_weight) == 0.5  # the item model alone was scored
    assert model.epochs == 3 and model.choices()["epochs"] == 3 and model.choices()["epochs_scored_on_validation"] == 5
    three_passes = ScalableItemModel(data.n_users, data.n_items, ranking_env.profiles(), rank=16, epochs=3,
                                     batch_users=64).fit(data.train.users, data.train.items)
    torch.testing.assert_close(model.A, three_passes.A, rtol=0, atol=0)  # stands in pass 3, not pass 5


def test_train_chooses_the_passes_on_validation_and_the_final_fit_trains_as_many(ranking_env):
    data, profiles = ranking_env.data, ranking_env.profiles()
    config = ranking_env.config.override("bert_rs", solver="scalable", rank=16, epochs=8,
                                         patience=2, text_weights=[0.0, 0.5])
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, refit_with_validation=True))
    spec = RunSpec(model="bert_rs", embeddings="synthetic")
    result = train(spec, config, data, profiles, progress=False)
    assert result.fitted_on == "train+valid"
    scores = [row["valid_ndcg@10"] for row in result.curves]
    assert result.best_epoch == scores.index(max(scores)) + 1 and result.model.choices()["epochs"] == result.best_epoch
    assert len(scores) == min(8, result.best_epoch + 2)
    history = with_validation_in_training(data)
    again = build_model(spec, config.override("bert_rs", epochs=result.best_epoch), data.n_users,
                        data.n_items, profiles)
    again.fit(history.train.users, history.train.items)
    torch.testing.assert_close(result.model.A, again.A, rtol=0, atol=0)


def test_the_closed_form_loss_equals_elsas_dense_loss_and_its_gradient():
    """2 - 2 cos(x, r) from q = xU and U^T U is the dense normalised reconstruction loss, value and gradient."""
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand(6, 40, generator=generator) < 0.2).float()
    x[:, 0] = 1.0  # every user has a training item (fit trains only those)
    a = torch.randn(40, 8, generator=generator, dtype=torch.float64, requires_grad=True)

    def dense(a):
        unit = torch.nn.functional.normalize(a, dim=-1)
        reconstruction = (x.double() @ unit) @ unit.T - x.double()
        return (torch.nn.functional.normalize(x.double(), dim=-1)
                - torch.nn.functional.normalize(reconstruction, dim=-1)).pow(2).sum(-1).mean()

    def closed_form(a):
        unit = torch.nn.functional.normalize(a, dim=-1)
        return normalised_reconstruction_loss(x.double() @ unit, x.sum(-1).double(), unit.T @ unit)

    torch.testing.assert_close(closed_form(a), dense(a))
    torch.testing.assert_close(torch.autograd.grad(closed_form(a), a)[0], torch.autograd.grad(dense(a), a)[0])
    # and in float32, as it trains
    a32 = a.detach().float().requires_grad_()
    unit = torch.nn.functional.normalize(a32, dim=-1)
    loss32 = normalised_reconstruction_loss(x @ unit, x.sum(-1), unit.T @ unit)
    torch.testing.assert_close(loss32.double(), dense(a), rtol=1e-5, atol=1e-6)
