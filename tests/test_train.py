"""Training: the text signal is used (and the shuffle ablation removes it), selection sees validation only, the
final fit learns the chosen form from training + validation pairs, checkpoints round-trip and refuse other caches
or data, and the train stage runs from the command line."""

import dataclasses

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from pipeline.config import RunSpec
from pipeline.io import DataError
from pipeline.ranking.evaluation.evaluate import evaluate, full_ranking_mask
from pipeline.ranking.checkpoint import check_split_unseen, load_checkpoint, save_checkpoint
from pipeline.ranking.registry import build_model
from pipeline.ranking.training.train import fit_on_training, train, with_validation_in_training
from tests.ranking_fixtures import Untouchable, replace_config, with_test_positives_moved, write_train_params


pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_bert_rs_beats_neumf_and_shuffle_removes_the_gain(ranking_env, trained_runs):
    data = ranking_env.data
    ndcg = {
        name: evaluate(result.model, data, "test", ks=[10], protocols=["sampled"])["sampled"]["ndcg@10"]
        for name, (_, result) in trained_runs.items()
    }
    gain = ndcg["bert_rs_neural"] - ndcg["neumf"]
    assert gain > 0.05, ndcg
    assert ndcg["bert_rs_shuffled"] - ndcg["neumf"] < 0.5 * gain, ndcg


def test_validation_ranking_never_reads_the_test_split(ranking_env, trained_runs):
    data = ranking_env.data
    blind = dataclasses.replace(data, test=Untouchable("test"), candidates={"valid": data.candidates["valid"]})
    mask = full_ranking_mask(blind, "valid")
    assert mask.contains(data.train.users, data.train.items).all()
    assert mask.contains(data.valid.users, data.valid.items).all()
    assert not mask.contains(data.test.users, data.test.items).any()  # test items stay in the competition
    model = trained_runs["neumf"][1].model
    assert evaluate(model, blind, "valid", protocols=["full"])["full"] == evaluate(
        model, data, "valid", protocols=["full"])["full"]


@pytest.mark.parametrize("model,solver", [("ease", "auto"), ("bert_rs", "dense"), ("bert_rs", "scalable"),
                                          ("neumf", "auto")])
def test_every_choice_and_validation_number_ignores_where_the_test_positives_are(ranking_env, model, solver):
    data, profiles = ranking_env.data, ranking_env.profiles()
    moved = with_test_positives_moved(data)
    config = replace_config(ranking_env.config, epochs=4, patience=2)
    solver_settings = {"dense": {"text_side_weights": [0.0, 1.0]}, "scalable": {"rank": 16, "epochs": 4, "patience": 2},
                       "auto": {"text_side_weights": [0.0, 1.0]}}[solver]
    config = config.override("bert_rs", solver=solver, text_weights=[0.0, 0.5, 1.0], **solver_settings)
    spec = RunSpec(model=model, embeddings="x" if model == "bert_rs" else None)
    seen, blind = (train(spec, config, d, profiles, progress=False) for d in (data, moved))
    np.testing.assert_equal(blind.curves, seen.curves)  # NaN-aware: closed-form rows have no loss
    assert blind.best_epoch == seen.best_epoch and blind.best_valid == seen.best_valid
    if model == "bert_rs":
        assert blind.model.choices() == seen.model.choices()
    assert evaluate(blind.model, moved, "valid", protocols=["full"])["full"] == evaluate(
        seen.model, data, "valid", protocols=["full"])["full"]


def test_early_stopping_selects_the_epoch_on_full_ranking_validation_ndcg(ranking_env):
    data = ranking_env.data
    config = replace_config(ranking_env.config, epochs=8, patience=2)
    result = train(RunSpec(model="neumf"), config, data, progress=False)
    scores = [row["valid_ndcg@10"] for row in result.curves]
    assert result.best_epoch == 1 + int(np.argmax(scores))  # first epoch reaching the best validation score
    assert len(result.curves) - result.best_epoch <= config.section("neumf").patience
    full = evaluate(result.model, data, "valid", ks=[10], protocols=["full"])["full"]
    assert result.best_valid["ndcg@10"] == pytest.approx(full["ndcg@10"]) == pytest.approx(max(scores))
    assert result.best_valid["n"] == len(data.valid)


def test_fixed_epochs_trains_exactly_that_many_and_keeps_the_last(ranking_env):
    data = ranking_env.data
    config = replace_config(ranking_env.config, epochs=50, patience=1)
    result = train(RunSpec(model="gmf"), config, data, progress=False, fixed_epochs=3)
    assert [row["epoch"] for row in result.curves] == [1, 2, 3] and result.best_epoch == 3
    full = evaluate(result.model, data, "valid", ks=[10], protocols=["full"])["full"]
    assert (result.best_valid["ndcg@10"] == pytest.approx(full["ndcg@10"])
            == pytest.approx(result.curves[-1]["valid_ndcg@10"]))


def test_the_neural_heads_step_with_adams_fused_kernel(ranking_env, monkeypatch):
    """One pass over each parameter per step: foreach Adam's several passes over every row of the ID and gate tables
    were 2-4x slower per step at the paper's shape (benchmarks/results/neural_epoch.md)."""
    made = []
    real_adam = torch.optim.Adam
    monkeypatch.setattr(torch.optim, "Adam", lambda *args, **kwargs: made.append(kwargs) or real_adam(*args, **kwargs))
    train(RunSpec(model="gmf"), replace_config(ranking_env.config, epochs=1), ranking_env.data, progress=False)
    assert made and all(kwargs.get("fused") for kwargs in made)


def test_checkpoint_round_trip_and_refusals(ranking_env, trained_runs, tmp_path):
    data, profiles = ranking_env.data, ranking_env.profiles()
    users, items = torch.tensor([0, 5, 9]), torch.tensor([1, 2, 3])
    for name in ("bert_rs_neural", "bert_rs_shuffled", "neumf"):
        spec, result = trained_runs[name]
        out = save_checkpoint(tmp_path / name, result, spec, ranking_env.config, data, profiles, ranking_env.cache,
                              name)
        ckpt = load_checkpoint(out, data)
        torch.testing.assert_close(ckpt.model.score(users, items), result.model.score(users, items))
        assert ckpt.info["best_epoch"] == result.best_epoch and ckpt.info["n_items"] == data.n_items

    with pytest.raises(DataError, match="weights_fingerprint"):
        load_checkpoint(tmp_path / "bert_rs_neural", data, cache_path=ranking_env.other_cache)

    other_data = dataclasses.replace(data, fingerprint="someone-else")
    with pytest.raises(DataError, match="other prepared data|trained on prepared data"):
        load_checkpoint(tmp_path / "neumf", other_data)


@pytest.mark.parametrize("model", ["pop", "ease", "mf"])
def test_baselines_train_through_the_same_entry_point(ranking_env, tmp_path, model):
    data = ranking_env.data
    config = replace_config(ranking_env.config, epochs=3, lambdas=[50.0])
    result = train(RunSpec(model=model), config, data, progress=False)
    assert result.curves and "valid_ndcg@10" in result.curves[0]
    save_checkpoint(tmp_path / model, result, RunSpec(model=model), config, data)
    ckpt = load_checkpoint(tmp_path / model, data)
    users = torch.tensor([0, 1])
    torch.testing.assert_close(ckpt.model.score_all(users), result.model.score_all(users))


def test_train_cli(ranking_env, tmp_path):
    from stages.train import main

    app = typer.Typer()
    app.command()(main)
    params = write_train_params(tmp_path / "params.yaml")
    runner = CliRunner()
    common = ["--prepared", str(ranking_env.prepared), "--params", str(params), "--no-progress"]
    res = runner.invoke(app, common + ["--run", "bert_rs", "--out", str(tmp_path / "m/bert_rs"),
                                       "--curves", str(tmp_path / "c/bert_rs.csv"),
                                       "--embeddings", str(ranking_env.cache)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m/bert_rs/run.json").is_file() and (tmp_path / "c/bert_rs.csv").read_text().startswith("epoch,")
    res = runner.invoke(app, common + ["--run", "bert_rs", "--out", str(tmp_path / "m/root"), "--curves",
                                       str(tmp_path / "c/root.csv"),
                                       "--embeddings-root", str(ranking_env.cache.parent)])
    assert res.exit_code == 2 and "minilm" in res.output  # ROOT/minilm does not exist: named in the error
    res = runner.invoke(app, common + ["--run", "bert_rs", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--embeddings" in res.output
    res = runner.invoke(app, common + ["--run", "nope"])
    assert res.exit_code == 2 and "runs.nope" in res.output


# ------------------------------------------------------------------------------------- the final fit (train + valid)

def _refit(config):
    return replace_config(config, refit_with_validation=True)


@pytest.mark.parametrize("model", ["ease", "bert_rs"])
def test_the_final_fit_keeps_every_choice_and_scores_test_from_train_and_validation_pairs(ranking_env, model):
    data, profiles = ranking_env.data, ranking_env.profiles()
    # a float64 grid: the search's measurement of the chosen setting is then the solved model's own, exactly
    config = replace_config(ranking_env.config, lambdas=[5.0, 50.0, 500.0]).override(
        "bert_rs", lambdas=[5.0, 50.0, 500.0], text_side_weights=[0.0, 1.0], text_weights=[0.0, 0.5],
        search_precision="float64")
    spec = RunSpec(model=model, embeddings="x" if model == "bert_rs" else None)
    chosen = train(spec, config, data, profiles, progress=False)
    final = train(spec, _refit(config), data, profiles, progress=False)
    assert (chosen.fitted_on, final.fitted_on) == ("train", "train+valid")
    assert final.model.choices() == chosen.model.choices()  # nothing chosen again
    assert final.best_valid == chosen.best_valid and final.selection == chosen.selection
    # in float32 (the default) the same choice, measured with float32's rounding: scores that tie exactly in the
    # solved model (32 of this world's 400 validation positives tie with 28 competitors on average) are told apart
    # by it instead of all counted against the positive
    rounded = train(spec, _refit(config.override(search_precision="float32")), data, profiles, progress=False)
    assert rounded.model.choices() == final.model.choices()
    assert rounded.best_valid["ndcg@10"] == pytest.approx(final.best_valid["ndcg@10"], abs=0.002)
    ease = final.model if model == "ease" else final.model.ease
    history = ease.rows(torch.as_tensor(data.valid.users))
    assert bool(history[torch.arange(len(data.valid)), torch.as_tensor(data.valid.items)].all())  # x_u holds valid
    # the one-solve refit equals a model fitted on training + validation pairs and put in the chosen setting
    both = with_validation_in_training(data)
    fresh = build_model(spec, config, data.n_users, data.n_items, profiles)
    fresh.fit(both.train.users, both.train.items)
    fresh.apply(chosen.selection)
    users = torch.arange(data.n_users)
    torch.testing.assert_close(final.model.score_all(users), fresh.score_all(users))
    assert not torch.allclose(final.model.score_all(users), chosen.model.score_all(users))


def test_the_final_popularity_counts_validation_interactions(ranking_env):
    data = ranking_env.data
    final = train(RunSpec(model="pop"), _refit(ranking_env.config), data, progress=False)
    counts = np.bincount(np.concatenate([data.train.items, data.valid.items]), minlength=data.n_items)
    np.testing.assert_array_equal(final.model.score_all(torch.tensor([0]))[0].numpy(), counts)


def test_a_neural_final_fit_retrains_its_chosen_epochs_on_train_and_validation_from_the_same_seed(ranking_env):
    data = ranking_env.data
    config = replace_config(ranking_env.config, epochs=25, patience=2)
    chosen = train(RunSpec(model="gmf"), config, data, progress=False)
    assert chosen.best_epoch < len(chosen.curves)  # early-stopped: the chosen count is not the number trained
    final = train(RunSpec(model="gmf"), _refit(config), data, progress=False)
    assert final.curves == chosen.curves and final.best_epoch == chosen.best_epoch  # chosen on the train-only fit
    again = fit_on_training(RunSpec(model="gmf"), config, with_validation_in_training(data), progress=False,
                            fixed_epochs=chosen.best_epoch)
    for name, weights in final.model.state_dict().items():
        torch.testing.assert_close(weights, again.model.state_dict()[name])
        assert not torch.equal(weights, chosen.model.state_dict()[name]) or name.endswith("bias")


@pytest.mark.parametrize("model", ["bert_rs", "neumf"])
def test_the_final_fit_never_reads_the_test_split(ranking_env, model):
    data, profiles = ranking_env.data, ranking_env.profiles()
    blind = dataclasses.replace(data, test=Untouchable("test"), candidates={"valid": data.candidates["valid"]})
    config = replace_config(_refit(ranking_env.config), epochs=2)
    result = train(RunSpec(model=model, embeddings="x" if model == "bert_rs" else None), config, blind, profiles,
                   progress=False)
    assert result.fitted_on == "train+valid"


def test_a_run_fitted_on_validation_pairs_is_refused_on_validation_by_name(ranking_env, tmp_path):
    data = ranking_env.data
    result = train(RunSpec(model="pop"), _refit(ranking_env.config), data, progress=False)
    save_checkpoint(tmp_path / "pop", result, RunSpec(model="pop"), _refit(ranking_env.config), data)
    info = load_checkpoint(tmp_path / "pop", data).info
    assert info["fitted_on"] == "train+valid"
    check_split_unseen(info, "test", "run.json")  # test is what it is for
    with pytest.raises(DataError, match=r"run\.json: .*training \+ valid pairs .*train\.refit_with_validation"):
        check_split_unseen(info, "valid", "run.json")
