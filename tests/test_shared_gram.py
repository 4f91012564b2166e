"""Work done once per prepared data (`bertrs gram`, data/gram/) and reused by the dense closed-form runs: reused work
gives the same choices and weights as work computed afresh, is never used for other pairs, and is skipped past the
memory budget."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pipeline.config import RunSpec
from pipeline.io import DataError
from pipeline.ranking.models import baselines
from pipeline.ranking.shared.gram import META_FILE, read_shared_eigen, write_shared_gram
from pipeline.ranking.training.train import train, with_validation_in_training
from stages.cli import app
from tests.ranking_fixtures import replace_config

RUNS = {"ease": RunSpec(model="ease"), "bert_rs": RunSpec(model="bert_rs", embeddings="synthetic")}


def fitted(ranking_env, shared_gram=None):
    config = replace_config(ranking_env.config, "ease", lambdas=[1.0, 10.0, 100.0])
    config = dataclasses.replace(config, train=dataclasses.replace(config.train, refit_with_validation=True))
    data, profiles = ranking_env.data, ranking_env.profiles()
    return {name: train(spec, config, data, profiles, progress=False, shared_gram=shared_gram)
            for name, spec in RUNS.items()}


def test_runs_searching_from_the_shared_decomposition_choose_and_weigh_as_runs_that_decompose_afresh(
        ranking_env, tmp_path, monkeypatch, torch_single_thread):
    afresh = fitted(ranking_env)
    write_shared_gram(ranking_env.data, tmp_path / "gram")
    decompositions = []
    monkeypatch.setattr(baselines.EigenGram, "__init__",
                        lambda self, gram: decompositions.append(gram.shape) or pytest.fail("decomposed again"))
    shared = fitted(ranking_env, tmp_path / "gram")
    assert not decompositions
    for name in RUNS:
        assert shared[name].model.choices() == afresh[name].model.choices(), name
        assert shared[name].selection == afresh[name].selection, name
        for key, weights in afresh[name].model.state_dict().items():
            assert torch.equal(shared[name].model.state_dict()[key], weights), (name, key)


def test_a_decomposition_of_other_pairs_or_other_data_is_never_used(ranking_env, tmp_path):
    data = ranking_env.data
    write_shared_gram(data, tmp_path / "gram")
    assert read_shared_eigen(tmp_path / "gram", data, data.train.users, data.train.items) is not None
    final_fit = with_validation_in_training(data).train  # the final fit's pairs: another Gram
    assert read_shared_eigen(tmp_path / "gram", data, final_fit.users, final_fit.items) is None
    other = dataclasses.replace(data, fingerprint="another-dataset")
    with pytest.raises(DataError, match="rerun bertrs gram"):
        read_shared_eigen(tmp_path / "gram", other, data.train.users, data.train.items)
    with pytest.raises(DataError, match="not a shared-gram folder"):
        read_shared_eigen(tmp_path, data, data.train.users, data.train.items)


def test_past_the_memory_budget_the_stage_writes_why_and_the_runs_decompose_nothing_shared(ranking_env, tmp_path):
    result = CliRunner().invoke(app, ["gram", "--prepared", str(ranking_env.prepared), "--out", str(tmp_path / "g"),
                                      "--params", str(budget_params(tmp_path, 0.000001))])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "g" / META_FILE).read_text())
    assert meta["eigen"] is None and "more than 1e-06 GB" in meta["skipped"]
    assert "not decomposed" in result.output
    data = ranking_env.data
    assert read_shared_eigen(tmp_path / "g", data, data.train.users, data.train.items) is None


def test_the_stage_writes_the_decomposition_a_run_would_take(ranking_env, tmp_path):
    result = CliRunner().invoke(app, ["gram", "--prepared", str(ranking_env.prepared), "--out", str(tmp_path / "g"),
                                      "--params", str(budget_params(tmp_path, 1.0))])
    assert result.exit_code == 0, result.output
    data = ranking_env.data
    eigen = read_shared_eigen(tmp_path / "g", data, data.train.users, data.train.items)
    ease = baselines.EASE(data.n_users, data.n_items)
    ease.hold_pairs(data.train.users, data.train.items)
    own = baselines.EigenGram(ease.gram())
    assert torch.equal(eigen.s, own.s) and torch.equal(eigen.v, own.v)
    assert np.isclose(float(eigen.s.sum()), len(data.train))  # the trace of X^T X: one per training pair


def budget_params(tmp_path, gb: float):
    path = tmp_path / "params.yaml"
    path.write_text(f"train:\n  memory_budget_gb: {gb:.9f}\n")
    return path
