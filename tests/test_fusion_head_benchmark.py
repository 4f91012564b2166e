"""The fusion-head benchmark's stacking: out-of-fold features never let a training pair score itself, and a stack
that has learned nothing ranks exactly like the closed-form default it is stacked on."""

import numpy as np
import pytest
import torch

from benchmarks.fusion_head import (StackedHead, assign_folds, closed_form_parts, default_weights,
                                    out_of_fold_features)
from pipeline.config import RunSpec
from pipeline.ranking.train import train
from tests.ranking_fixtures import replace_config

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_every_training_pair_is_scored_by_a_fold_model_that_never_saw_it_and_each_fold_sees_all_other_pairs():
    rng = np.random.default_rng(0)
    n_users, n_items, n_folds = 30, 40, 4
    users = np.repeat(np.arange(n_users), rng.integers(1, 9, n_users))
    items = np.concatenate([rng.choice(n_items, np.sum(users == u), replace=False) for u in range(n_users)])
    folds = assign_folds(users, n_folds, seed=1)

    def fit_and_score(keep):  # a "model" whose score says whether it was fitted on the pair
        seen = torch.zeros(n_users, n_items, 1)
        seen[users[keep], items[keep], 0] = 1.0
        return seen

    oof = out_of_fold_features(folds, n_folds, fit_and_score)
    assert (oof[folds, users, items, 0] == 0).all()  # the fold a pair is read from never saw it
    for k in range(n_folds):
        others = folds != k
        assert (oof[k, users[others], items[others], 0] == 1).all()
    for u in range(n_users):  # a user's pairs are spread over distinct folds before any fold repeats
        own = folds[users == u]
        assert len(set(own)) == min(len(own), n_folds)


def test_a_stack_that_has_learned_nothing_ranks_exactly_like_the_default_bert_rs(ranking_env):
    data, profiles = ranking_env.data, ranking_env.profiles()
    # every part switched on (side information, whitening, the L3AE prior, a text match, popularity)
    config = replace_config(ranking_env.config, text_side_weights=[1.0], text_weights=[0.5], bert_rs_pop_weights=[0.5],
                            bert_rs_whitening=[True], bert_rs_regularisers=["l3ae"], bert_rs_lambdas=[10.0, 100.0])
    default = train(RunSpec(model="bert_rs", embeddings="x"), config, data, profiles, progress=False).model
    choices = default.choices()
    everything = np.ones(len(data.train.users), dtype=bool)
    stack = StackedHead(None, closed_form_parts(config, choices, data, profiles, everything), default_weights(choices))
    users = torch.arange(data.n_users)
    with torch.no_grad():
        torch.testing.assert_close(stack.score_all(users), default.score_all(users), atol=1e-4, rtol=1e-4)
