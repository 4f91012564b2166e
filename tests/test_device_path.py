"""The closed-form models' accelerator code path (torch's linear algebra on `train.device`) gives the CPU path's
results: the same inverses and decompositions to float tolerance, the same choices, the same scores. Run here on the
CPU by switching `on_accelerator` on, so that a machine without a GPU still checks the code a GPU would run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pipeline.config import RunSpec
from pipeline.ranking.models import baselines
from pipeline.ranking.models.baselines import EASE, EigenGram, ridge_inverse_
from pipeline.ranking.models.review_ease import ReviewAwareEASE
from pipeline.ranking.selection.select import select
from pipeline.ranking.training.train import train
from pipeline.ranking.selection.spaces import ReviewAwareSpace
from tests.ranking_fixtures import replace_config
from tests.test_review_ease import random_world


def random_gram(n: int = 40, seed: int = 0) -> torch.Tensor:
    x = (np.random.default_rng(seed).random((90, n)) < 0.2).astype(np.float64)
    return torch.from_numpy(x.T @ x)


def test_the_device_path_inverts_and_decomposes_as_lapack_does(monkeypatch):
    lapack_inverse, lapack_b = ridge_inverse_(random_gram(), 3.0), EigenGram(random_gram()).ease_weights(3.0)
    monkeypatch.setattr(baselines, "on_accelerator", lambda matrix: True)
    torch_inverse, torch_b = ridge_inverse_(random_gram(), 3.0), EigenGram(random_gram()).ease_weights(3.0)
    assert torch.allclose(torch_inverse, lapack_inverse, rtol=1e-9, atol=1e-12)
    assert torch.allclose(torch_b, lapack_b, atol=1e-6)
    with pytest.raises(ValueError, match="lambda = 0"):
        ridge_inverse_(torch.zeros(3, 3, dtype=torch.float64), 0.0)


def fitted_runs(ranking_env):
    config = replace_config(ranking_env.config, "ease", lambdas=[1.0, 10.0, 100.0])
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, refit_with_validation=True))
    data, profiles = ranking_env.data, ranking_env.profiles()
    runs = {"ease": RunSpec(model="ease"), "bert_rs": RunSpec(model="bert_rs", embeddings="synthetic")}
    return {name: train(spec, config, data, profiles, progress=False) for name, spec in runs.items()}


def test_ease_and_bert_rs_searched_and_refitted_on_the_device_path_choose_and_score_as_on_the_cpu(
        ranking_env, monkeypatch, torch_single_thread):
    on_cpu = fitted_runs(ranking_env)
    monkeypatch.setattr(baselines, "on_accelerator", lambda matrix: True)
    on_device = fitted_runs(ranking_env)
    users = torch.arange(ranking_env.data.n_users)
    for name in on_cpu:
        assert on_device[name].model.choices() == on_cpu[name].model.choices(), name
        assert on_device[name].selection.score == pytest.approx(on_cpu[name].selection.score, abs=1e-9)
        assert torch.allclose(on_device[name].model.score_all(users), on_cpu[name].model.score_all(users),
                              atol=1e-4), name


def test_the_search_announces_how_many_candidates_it_will_score_and_shows_them_scored(capfd):
    data, _, profiles = random_world(seed=3)
    model = ReviewAwareEASE(data.n_users, data.n_items, profiles,
                            ReviewAwareSpace(lambdas=[1.0, 10.0], side_weights=[0.0, 1.0],
                                             matches=["item_neighbours", "user_profile"], text_weights=[0.0, 0.5, 1.0],
                                             regularisers=["ease", "l3ae"], whitening=[False, True],
                                             pop_weights=[0.0, 1.0]))
    total = model.candidate_count()
    chosen = select(model.fit(data.train.users, data.train.items), data, progress=True)
    assert chosen.looks == total == 1 + 2 * 2 * 2 * 2 * (2 * 2 + 1) * 2
    assert f"{total}/{total}" in capfd.readouterr().err
    ease = EASE(data.n_users, data.n_items, lambdas=[1.0, 10.0, 100.0]).fit(data.train.users, data.train.items)
    assert select(ease, data).looks == ease.candidate_count() == 3
