"""Training: the text signal is used (and the shuffle ablation removes it), selection sees validation only,
checkpoints round-trip and refuse other caches or data, and the train stage runs from the command line."""

import dataclasses

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from pipeline.config import RunSpec
from pipeline.io import DataError
from pipeline.ranking import evaluate as evaluate_module
from pipeline.ranking import train as train_module
from pipeline.ranking.evaluate import evaluate
from pipeline.ranking.train import load_checkpoint, save_checkpoint, train
from tests.ranking_fixtures import replace_config


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


def test_selection_sees_the_validation_split_only(ranking_env, monkeypatch):
    data = ranking_env.data
    seen = []
    real = train_module.rank_sampled

    def spy(model, candidates, *args, **kwargs):
        seen.append(candidates)
        return real(model, candidates, *args, **kwargs)

    def no_full(*args, **kwargs):
        raise AssertionError("full ranking must not run during training")

    monkeypatch.setattr(train_module, "rank_sampled", spy)
    monkeypatch.setattr(evaluate_module, "rank_full", no_full)
    config = replace_config(ranking_env.config, epochs=8, patience=2)
    result = train(RunSpec(model="neumf"), config, data, progress=False)
    assert seen and all(c is data.candidates["valid"] for c in seen)
    scores = [row["valid_ndcg@10"] for row in result.curves]
    assert result.best_epoch == 1 + int(np.argmax(scores))  # first epoch reaching the best validation score
    assert len(result.curves) - result.best_epoch <= config.patience
    # the test split cannot influence training: replacing it changes nothing
    empty = dataclasses.replace(data.test, users=data.test.users[:0], items=data.test.items[:0])
    blind = dataclasses.replace(data, test=empty, candidates={"valid": data.candidates["valid"]})
    again = train(RunSpec(model="neumf"), config, blind, progress=False)
    assert again.curves == result.curves


def test_checkpoint_round_trip_and_refusals(ranking_env, trained_runs, tmp_path):
    data, profiles = ranking_env.data, ranking_env.profiles()
    users, items = torch.tensor([0, 5, 9]), torch.tensor([1, 2, 3])
    for name in ("bert_rs_neural", "bert_rs_shuffled", "neumf"):
        spec, result = trained_runs[name]
        out = save_checkpoint(tmp_path / name, result, spec, ranking_env.config, data, profiles, ranking_env.cache, name)
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
    config = replace_config(ranking_env.config, epochs=3, ease_lambda=50.0)
    result = train(RunSpec(model=model), config, data, progress=False)
    assert result.curves and "valid_ndcg@10" in result.curves[0]
    save_checkpoint(tmp_path / model, result, RunSpec(model=model), config, data)
    ckpt = load_checkpoint(tmp_path / model, data)
    users = torch.tensor([0, 1])
    torch.testing.assert_close(ckpt.model.score_all(users), result.model.score_all(users))


def _write_params(path, epochs=3):
    path.write_text(
        "runs:\n"
        "  pop: {model: pop}\n"
        "  bert_rs: {model: bert_rs_neural, embeddings: minilm}\n"
        "train:\n"
        f"  factors: 8\n  mlp_layers: [16, 8]\n  epochs: {epochs}\n  batch_size: 256\n  learning_rate: 0.01\n"
        "  device: cpu\n"
    )
    return path


def test_train_cli(ranking_env, tmp_path):
    from stages.train import main

    app = typer.Typer()
    app.command()(main)
    params = _write_params(tmp_path / "params.yaml")
    runner = CliRunner()
    common = ["--prepared", str(ranking_env.prepared), "--params", str(params), "--no-progress"]
    res = runner.invoke(app, common + ["--run", "bert_rs", "--out", str(tmp_path / "m/bert_rs"),
                                       "--curves", str(tmp_path / "c/bert_rs.csv"), "--embeddings", str(ranking_env.cache)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m/bert_rs/run.json").is_file() and (tmp_path / "c/bert_rs.csv").read_text().startswith("epoch,")
    res = runner.invoke(app, common + ["--run", "bert_rs", "--out", str(tmp_path / "m/root"), "--curves",
                                       str(tmp_path / "c/root.csv"), "--embeddings-root", str(ranking_env.cache.parent)])
    assert res.exit_code == 2 and "minilm" in res.output  # ROOT/minilm does not exist: named in the error
    res = runner.invoke(app, common + ["--run", "bert_rs", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--embeddings" in res.output
    res = runner.invoke(app, common + ["--run", "nope"])
    assert res.exit_code == 2 and "runs.nope" in res.output
