"""The model registry and the ranker interface: one table of model names, and a model that lacks a piece of the
interface fails when it is built, not when a stage first calls the missing method."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.config import MODELS, TEXT_MODELS, RankingConfig, RunSpec, TrainConfig
from pipeline.ranking import registry
from pipeline.ranking.protocol import ClosedFormRanker, Ranker, TrainableRanker
from pipeline.ranking.registry import build_model
from tests.ranking_fixtures import N_ITEMS, N_USERS, tiny_profiles


def test_every_model_name_builds_a_ranker_from_its_own_section():
    config = RankingConfig(TrainConfig(device="cpu", seed=0))
    for name in MODELS:
        profiles = tiny_profiles() if name in TEXT_MODELS else None
        model = build_model(RunSpec(model=name), config, N_USERS, N_ITEMS, profiles)
        assert isinstance(model, Ranker), name
        assert model.trainable == isinstance(model, TrainableRanker) != isinstance(model, ClosedFormRanker), name
        assert model.score_all(torch.arange(N_USERS)).shape == (N_USERS, N_ITEMS), name


def test_a_model_missing_from_the_registry_is_named_at_import(monkeypatch):
    monkeypatch.delitem(registry.REGISTRY, "neumf")
    with pytest.raises(ValueError, match="registry names"):
        registry.check_registry()


def test_a_registry_config_other_than_the_params_section_is_named(monkeypatch):
    monkeypatch.setitem(registry.REGISTRY, "ease", dataclasses.replace(registry.REGISTRY["ease"],
                                                                        config=registry.REGISTRY["mf"].config))
    with pytest.raises(ValueError, match="ease: registry config MFConfig != models.ease EASEConfig"):
        registry.check_registry()


def test_a_ranker_without_score_parts_fails_at_construction():
    class Incomplete(ClosedFormRanker):
        def fit(self, users, items):
            return self

        def score(self, users, items):
            return torch.zeros(len(users))

        def score_all(self, users):
            return torch.zeros(len(users), N_ITEMS)

    with pytest.raises(TypeError, match="score_parts"):
        Incomplete()


def test_one_model_section_changes_only_that_model():
    base = RankingConfig()
    changed = base.override("neumf", epochs=3)
    assert changed.section("neumf").epochs == 3
    assert all(changed.section(n) == base.section(n) for n in MODELS if n != "neumf")
