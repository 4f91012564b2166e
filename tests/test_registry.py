"""The model registry and the ranker interface: one table of model names, and a model that lacks a piece of the
interface fails when it is built, not when a stage first calls the missing method."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pipeline.config import MODELS, TEXT_MODELS, ConfigError, RankingConfig, RunSpec, TrainConfig
from pipeline.ranking import registry
from pipeline.ranking.protocol import ClosedFormRanker, Ranker, TrainableRanker
from pipeline.ranking.registry import build_model, entry
from tests.ranking_fixtures import N_ITEMS, N_USERS, tiny_profiles


def test_every_model_name_builds_a_ranker_from_its_own_section():
    config = RankingConfig(TrainConfig(device="cpu", seed=0))
    for name in MODELS:
        profiles = tiny_profiles() if name in TEXT_MODELS else None
        model = build_model(RunSpec(model=name), config, N_USERS, N_ITEMS, profiles)
        assert isinstance(model, Ranker), name
        assert model.trainable == isinstance(model, TrainableRanker) != isinstance(model, ClosedFormRanker), name
        assert model.score_all(torch.arange(N_USERS)).shape == (N_USERS, N_ITEMS), name


def mlp_widths(model) -> list[int]:
    return [layer.out_features for layer in model.branches["mlp"].layers if isinstance(layer, torch.nn.Linear)]


def dropout_rates(model) -> list[float]:
    return [layer.p for layer in model.branches["mlp"].layers if isinstance(layer, torch.nn.Dropout)]


# a setting changed in one model's section, and where the built model shows it
SECTION_REACHES_MODEL = {
    "mf": ({"factors": 7, "loss": "bce"}, lambda m: (m.p.embedding_dim, m.loss_name), (7, "bce")),
    "ease": ({"lambdas": [123.0, 45.0]}, lambda m: (m.ease_lambda, m.grid_lambda), (123.0, [123.0, 45.0])),
    "gmf": ({"factors": 6, "mlp_layers": [12, 6]}, lambda m: m.widths["gmf"], 6),  # (the shared NCF knobs)
    "mlp": ({"factors": 6, "mlp_layers": [12, 6], "dropout": 0.25},
            lambda m: (mlp_widths(m), dropout_rates(m)), ([12, 6], [0.25, 0.25])),
    "neumf": ({"factors": 6, "mlp_layers": [12, 6]}, lambda m: (m.widths["gmf"], mlp_widths(m)), (6, [12, 6])),
    "bert_rs_paper": ({"factors": 6, "mlp_layers": [12, 6]}, lambda m: (m.widths["gmf"], mlp_widths(m)),
                      (6, [12, 6])),
    "bert_rs_neural": ({"semantic_form": "projected", "text_similarity": True, "user_id_dropout": 0.4},
                       lambda m: (m.semantic_form, "similarity" in m.branches, m.user_id_dropout),
                       ("projected", True, 0.4)),
    "semantic_only": ({"semantic_form": "projected", "factors": 6, "mlp_layers": [12, 6]},
                      lambda m: (m.semantic_form, m.widths["semantic"]), ("projected", 6)),
    "bert_rs": ({"lambdas": [7.0, 70.0], "text_weights": [0.0, 2.0], "solver": "dense"},
                lambda m: (m.space.lambdas, m.space.text_weights), ((7.0, 70.0), (0.0, 2.0))),
}


@pytest.mark.parametrize("name", MODELS)
def test_a_setting_in_a_models_own_section_reaches_the_model_it_builds(name):
    if name == "pop":
        pytest.skip("pop has no settings")
    changes, shown, expected = SECTION_REACHES_MODEL[name]
    config = RankingConfig(TrainConfig(device="cpu", seed=0)).override(name, **changes)
    profiles = tiny_profiles() if name in TEXT_MODELS else None
    assert shown(build_model(RunSpec(model=name), config, N_USERS, N_ITEMS, profiles)) == expected


@pytest.mark.parametrize("name", MODELS)
def test_the_registry_says_which_models_are_fitted_in_closed_form(name):
    profiles = tiny_profiles() if name in TEXT_MODELS else None
    model = build_model(RunSpec(model=name), RankingConfig(TrainConfig(device="cpu")), N_USERS, N_ITEMS, profiles)
    assert entry(name).closed_form == isinstance(model, ClosedFormRanker) == (not model.trainable)


def test_a_user_id_dropout_for_a_model_without_user_ids_is_refused_not_ignored():
    with pytest.raises(ConfigError, match="models.semantic_only.user_id_dropout: semantic_only has no user ID"):
        RankingConfig().override("semantic_only", user_id_dropout=0.3)


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


def test_each_fusion_model_switches_on_the_branches_of_its_paper(ranking_env):
    """NCF's GMF, MLP and NeuMF (He et al. 2017); BERT-RS's semantic branch beside both (eq. 12); text alone."""
    data = ranking_env.data
    expected = {"gmf": ["gmf"], "mlp": ["mlp"], "neumf": ["gmf", "mlp"], "bert_rs_paper": ["semantic", "gmf", "mlp"],
                "bert_rs_neural": ["semantic", "gmf", "mlp"], "semantic_only": ["semantic"]}
    for name, branches in expected.items():
        spec = RunSpec(model=name, embeddings="x" if name in TEXT_MODELS else None)
        model = build_model(spec, ranking_env.config, data.n_users, data.n_items, ranking_env.profiles())
        assert [b for b in model.branches if b != "similarity"] == branches, name
