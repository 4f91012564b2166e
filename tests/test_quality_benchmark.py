"""The quality benchmark's fairness helpers: the shuffle ablation can hold its partner's choices, and the bootstrap
resamples users (each with all of their positives), not positives."""

import dataclasses

import numpy as np
import pytest
import torch

from benchmarks.quality import fixed_choices, user_bootstrap
from pipeline.config import RunSpec
from pipeline.ranking.train import train
from tests.ranking_fixtures import replace_config

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_a_one_point_grid_from_the_partners_choices_reproduces_its_model_and_shuffling_then_changes_only_profiles(
        ranking_env):
    data, profiles = ranking_env.data, ranking_env.profiles()
    config = replace_config(ranking_env.config, text_side_weights=[0.0, 1.0], text_weights=[0.0, 0.5, 1.0])
    spec = RunSpec(model="bert_rs", embeddings="x")
    partner = train(spec, config, data, profiles, progress=False).model
    held = config.override("bert_rs", **fixed_choices(partner.choices()))
    again = train(spec, held, data, profiles, progress=False).model
    assert partner.choices()["validation_looks"] > 1 and again.choices()["validation_looks"] == 1
    users = torch.arange(data.n_users)
    torch.testing.assert_close(again.score_all(users), partner.score_all(users))
    shuffled = train(dataclasses.replace(spec, shuffle=True), held, data, profiles, progress=False).model
    settings = lambda model: {k: v for k, v in model.choices().items() if k != "validation_looks"}  # noqa: E731
    assert settings(shuffled) == settings(partner)  # no search left to fall back to plain EASE
    assert not torch.allclose(shuffled.score_all(users), partner.score_all(users))  # only the profiles moved


def test_the_bootstrap_resamples_users_with_all_their_positives():
    # user 0 gains 1 on each of 3 positives, user 1 gains 0 on its single positive: resampling users can only
    # give means 0 (user 1 twice), 3/4 or 1, so the interval's ends are 0 and 1; resampling positives would not
    low, high = user_bootstrap([1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], np.array([0, 0, 0, 1]))
    assert (low, high) == (0.0, 1.0)
