"""A neural run stopped mid-training (SIGKILL included) and rerun ends with the bytes of a run never stopped, in
its training-only loop and in the final fit; a state left by other settings is not taken up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.config import RunSpec
from pipeline.ranking.training import sgd
from pipeline.ranking.training.result import TrainResult
from pipeline.ranking.training import train as training
from pipeline.io import default_work_dir as work_dir
from tests.finetune_fixtures import ROOT, environment, folder_bytes, kill_after_checkpoint, run_to_completion

pytestmark = pytest.mark.usefixtures("torch_single_thread")

NEUMF = RunSpec(model="neumf")


def dropout_config(config, **changes):
    """NeuMF with dropout (so torch's generator matters too) and no early stop before the budget."""
    return config.override("neumf", dropout=0.2, epochs=6, patience=6, **changes)


def counted_epochs(monkeypatch, stop_after: int | None = None) -> list[int]:
    """Count the epochs trained from here on (over both loops); with `stop_after`, the next training stops with
    KeyboardInterrupt as epoch number `stop_after + 1` begins."""
    real, count = sgd.train_epoch, [0]

    def epoch_or_stop(*args, **kwargs):
        if stop_after is not None and count[0] >= stop_after:
            raise KeyboardInterrupt
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(sgd, "train_epoch", epoch_or_stop)
    return count


def same_result(a: TrainResult, b: TrainResult) -> None:
    assert a.best_epoch == b.best_epoch and a.best_valid == b.best_valid
    assert [list(row.items()) for row in a.curves] == [list(row.items()) for row in b.curves]
    state_a, state_b = a.model.state_dict(), b.model.state_dict()
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)


@pytest.mark.parametrize("stop_at", [3, 8], ids=["training-only loop", "final fit"])
def test_a_stopped_run_rerun_ends_exactly_as_a_run_never_stopped(ranking_env, tmp_path, monkeypatch, stop_at):
    config = dropout_config(ranking_env.config).override(refit_with_validation=True)
    with monkeypatch.context() as patch:
        every = counted_epochs(patch)
        whole = training.train(NEUMF, config, ranking_env.data, progress=False)
    assert every[0] == 6 + whole.best_epoch > stop_at  # the final fit retrains best_epoch epochs after the six
    resume = tmp_path / "neumf.work"
    with monkeypatch.context() as patch:
        counted_epochs(patch, stop_after=stop_at - 1)
        with pytest.raises(KeyboardInterrupt):
            training.train(NEUMF, config, ranking_env.data, progress=False, resume_dir=resume)
    assert any(resume.glob("epochs-*.pt"))
    with monkeypatch.context() as patch:
        rest = counted_epochs(patch)
        resumed = training.train(NEUMF, config, ranking_env.data, progress=False, resume_dir=resume)
    assert rest[0] == every[0] - (stop_at - 1)  # the epochs done before the stop are not trained again
    same_result(resumed, whole)


def test_a_state_written_under_other_settings_is_not_taken_up(ranking_env, tmp_path, monkeypatch):
    resume = tmp_path / "neumf.work"
    with monkeypatch.context() as patch:
        counted_epochs(patch, stop_after=3)
        with pytest.raises(KeyboardInterrupt):
            training.train(NEUMF, dropout_config(ranking_env.config), ranking_env.data, progress=False,
                           resume_dir=resume)
    faster = dropout_config(ranking_env.config, learning_rate=0.02)
    with monkeypatch.context() as patch:
        trained = counted_epochs(patch)
        resumed = training.train(NEUMF, faster, ranking_env.data, progress=False, resume_dir=resume)
    assert trained[0] == 6  # every epoch of its own: the three written under the other rate are not used
    same_result(resumed, training.train(NEUMF, faster, ranking_env.data, progress=False))


PAUSING_ENTRY = """
import pathlib, sys, time
from pipeline.ranking.training import resume
flag, pause_after = pathlib.Path(sys.argv[1]), int(sys.argv[2])
save = resume.EpochStates.save
def save_then_wait(self, state, *args):
    save(self, state, *args)
    if state.epoch == pause_after:
        flag.touch()
        time.sleep(600)
resume.EpochStates.save = save_then_wait
from stages.cli import app
sys.argv = ["bertrs", *sys.argv[3:]]
app()
"""


def train_command(ranking_env, params: Path, out: Path, flag: Path, pause_after: int = 0) -> list[str]:
    return [sys.executable, "-c", PAUSING_ENTRY, str(flag), str(pause_after), "train", "--prepared",
            str(ranking_env.prepared), "--run", "neumf", "--out", str(out), "--curves", f"{out}.csv", "--params",
            str(params), "--no-progress"]


def test_a_train_stage_killed_with_sigkill_resumes_to_the_bytes_of_an_uninterrupted_one(ranking_env, tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("runs:\n  neumf: {model: neumf}\ntrain: {device: cpu}\nmodels:\n  neumf:\n    factors: 8\n"
                      "    mlp_layers: [16, 8]\n    dropout: 0.2\n    epochs: 5\n    patience: 5\n"
                      "    batch_size: 256\n    learning_rate: 0.01\n")
    whole, resumed, flag = tmp_path / "whole", tmp_path / "resumed", tmp_path / "epoch-saved"
    run_to_completion(train_command(ranking_env, params, whole, flag))
    kill_after_checkpoint(train_command(ranking_env, params, resumed, flag, pause_after=2), flag)
    assert not resumed.exists() and any(work_dir(resumed).glob("epochs-*.pt"))
    rerun = subprocess.run(train_command(ranking_env, params, resumed, flag), cwd=ROOT, env=environment(),
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "after epoch 2" in rerun.stderr  # taken up where the killed run left it, not trained again
    assert folder_bytes(resumed) == folder_bytes(whole)
    assert Path(f"{resumed}.csv").read_bytes() == Path(f"{whole}.csv").read_bytes()
    assert not work_dir(resumed).exists() and not work_dir(whole).exists()


@pytest.mark.slow
def test_two_torchrun_processes_killed_with_sigkill_resume_to_the_bytes_of_an_uninterrupted_launch(ranking_env,
                                                                                                  tmp_path):
    """Each process's torch generator is kept (their dropout draws differ), so the launch resumes exactly too."""
    from tests.finetune_fixtures import TORCHRUN

    entry = tmp_path / "pausing_train.py"
    entry.write_text(PAUSING_ENTRY)
    params = tmp_path / "params.yaml"
    params.write_text("runs:\n  neumf: {model: neumf}\ntrain: {device: cpu}\nmodels:\n  neumf:\n    factors: 8\n"
                      "    mlp_layers: [16, 8]\n    dropout: 0.2\n    epochs: 4\n    patience: 4\n"
                      "    batch_size: 127\n    learning_rate: 0.01\n")
    whole, resumed, flag = tmp_path / "whole", tmp_path / "resumed", tmp_path / "epoch-saved"

    def launch(out: Path, pause_after: int = 0, port: int = 29531) -> list[str]:
        command = train_command(ranking_env, params, out, flag, pause_after)
        return [str(TORCHRUN), "--nproc_per_node", "2", "--master_port", str(port), "--", str(entry), *command[3:]]

    run_to_completion(launch(whole))
    kill_after_checkpoint(launch(resumed, pause_after=2, port=29532), flag)
    assert not resumed.exists() and any(work_dir(resumed).glob("epochs-*.pt"))
    run_to_completion(launch(resumed, port=29533))
    assert folder_bytes(resumed) == folder_bytes(whole)
    assert Path(f"{resumed}.csv").read_bytes() == Path(f"{whole}.csv").read_bytes()
