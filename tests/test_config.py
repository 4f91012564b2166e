"""Specification of params.yaml loading: typed, validated, and every error names its key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, Params, RankingConfig, load_params

REPO = Path(__file__).resolve().parents[1]


def write_params(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_shipped_params_load_into_typed_sections():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    assert params.models.neumf.factors == 32 and params.models.neumf.mlp_layers[-1] == 32
    assert params.text_runs["bert_rs"].embeddings in params.encoders
    assert params.evaluate.ks == [1, 3, 5, 10]


@pytest.mark.parametrize(
    "data, message",
    [
        ({"prepare": {"min_user_reviewz": 3}}, r"prepare\.min_user_reviewz: unknown key"),
        ({"prepare": {"min_user_reviews": "3"}}, r"prepare\.min_user_reviews: expected an integer"),
        ({"prepare": {"protocol": "loo"}}, r"prepare\.protocol: 'loo' is not one of"),
        ({"prepare": {"test_share": 1.5}}, r"prepare\.test_share: must lie in"),
        ({"models": {"neumf": {"factors": 16}}},
         r"models\.neumf\.mlp_layers: last layer must equal models\.neumf\.factors"),
        ({"train": {"factors": 32}}, r"train\.factors: unknown key"),
        ({"models": {"mf": {"mlp_layers": [32]}}}, r"models\.mf\.mlp_layers: unknown key"),
        ({"models": {"lightgcn": {}}}, r"models\.lightgcn: unknown key"),
        ({"train": {"k_core": True}}, r"train\.k_core: unknown key"),
        ({"text_runs": {"x": {"model": "bert_rs_neural"}}},
         r"text_runs\.x\.embeddings: model bert_rs_neural needs an encoder name"),
        ({"text_runs": {"x": {"model": "bert_rs_neural", "embeddings": "nope"}}},
         r"text_runs\.x\.embeddings: 'nope' is not one of"),
        ({"runs": {"x": {"model": "bert_rs", "embeddings": "e"}}},
         r"runs\.x\.model: model bert_rs reads an embedding cache: put the run in text_runs"),
        ({"text_runs": {"x": {"model": "ease"}}}, r"text_runs\.x\.model: model ease reads no embeddings"),
        ({"runs": {"x": {"model": "gmf", "shuffle": True}}}, r"runs\.x\.shuffle"),
        ({"encoders": {"e": {"finetune": "yes"}}}, r"encoders\.e\.finetune: expected true or false"),
        ({"encoders": {"e": {"objective": "simcse"}}}, r"encoders\.e\.objective: 'simcse' is not one of"),
        ({"models": {"bert_rs": {"dense": {"text_matches": ["title"]}}}},
         r"models\.bert_rs\.dense\.text_matches\[0\]: 'title' is not one of"),
        ({"models": {"bert_rs": {"dense": {"text_side_weights": []}}}},
         r"models\.bert_rs\.dense\.text_side_weights: needs at least one value"),
        ({"models": {"bert_rs": {"solver": "scalable", "dense": {"lambdas": [5.0]}}}},
         r"models\.bert_rs\.dense: solver scalable ignores this section"),
        ({"models": {"bert_rs": {"solver": "dense", "scalable": {"rank": 8}}}},
         r"models\.bert_rs\.scalable: solver dense ignores this section"),
        ({"models": {"bert_rs_neural": {"user_id_dropout": 1.0}}},
         r"models\.bert_rs_neural\.user_id_dropout: must lie in"),
        ({"models": {"ease": {"lambdas": [0.0]}}}, r"models\.ease\.lambdas: needs values > 0"),
        ({"whatever": 1}, r"whatever: unknown key"),
    ],
)
def test_bad_parameters_name_the_key(tmp_path, data, message):
    with pytest.raises(ConfigError, match=message):
        load_params(write_params(tmp_path, data))


def test_missing_file_and_bad_yaml_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("prepare: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_a_single_input_path_is_accepted_as_a_list(tmp_path):
    params = load_params(write_params(tmp_path, {"prepare": {"input": "data/x.json.gz"}}))
    assert params.prepare.input == ["data/x.json.gz"]


def test_an_encoder_can_choose_its_own_pooling_and_finetune_decision(tmp_path):
    params = load_params(write_params(tmp_path, {
        "encoders": {"a": {"finetune": True}, "b": {"pooling": "mean"}},
        "embed": {"pooling": "pooler"},
    }))
    assert params.embed_for("a").pooling == "pooler" and params.embed_for("b").pooling == "mean"
    assert params.finetune_reason("a") is None
    assert params.finetune_reason("b") == "encoders.b.finetune is false"


def test_an_override_of_one_model_reaches_the_solver_section_that_holds_the_setting():
    config = RankingConfig().override("bert_rs", solver="scalable", rank=16, epochs=4, text_weights=[0.0, 1.0])
    section = config.section("bert_rs")
    assert (section.scalable.rank, section.scalable.epochs, section.text_weights) == (16, 4, [0.0, 1.0])
    assert RankingConfig().override("bert_rs", lambdas=[7.0]).section("bert_rs").dense.lambdas == [7.0]
    assert RankingConfig().override("bert_rs", scalable={"rank": 8}).section("bert_rs").scalable.rank == 8
    # a shared override (no model named) changes top-level fields only: bert_rs's scalable epochs stay
    assert RankingConfig().override(epochs=3).section("bert_rs").scalable.epochs == 10
    with pytest.raises(ConfigError, match=r"models\.bert_rs: no setting 'ranks' \(known: .*'scalable\.rank'"):
        RankingConfig().override("bert_rs", ranks=8)


def test_a_run_that_auto_ran_on_one_solver_reloads_whatever_its_other_solvers_section_says():
    from pipeline.config.ranking import BertRSConfig, ModelsConfig, ScalableSolverConfig

    trained = BertRSConfig(solver="auto", scalable=ScalableSolverConfig(rank=64))  # auto chose dense
    with pytest.raises(ConfigError, match="solver dense ignores this section"):
        ModelsConfig(bert_rs=dataclasses.replace(trained, solver="dense"))
    reloaded = ModelsConfig(bert_rs=trained.with_solver("dense")).bert_rs  # what checkpoint.py rebuilds
    assert reloaded.solver == "dense" and reloaded.dense == trained.dense and reloaded.scalable.rank == 128
