"""`bertrs train` under torchrun: two CPU processes (gloo) train the neural fusion head as one process does, up to
floating-point summation order; the first process alone writes the checkpoint and the global curves; a closed-form
model is fitted by the first process alone while the others leave."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from pipeline.config import RankingConfig, RunSpec, TrainConfig
from pipeline.ranking.training import distributed
from pipeline.ranking.checkpoint import load_checkpoint
from pipeline.ranking.registry import build_model
from tests.finetune_fixtures import ROOT, TORCHRUN, environment

# Two processes sum each batch's gradient in two parts, so their weights drift from one process's by float32
# rounding only: ~3e-6 on logits of size ~1 after four epochs here. Ranks are integers, so validation metrics move
# only where rounding flips a near-tie: at most 2 of the 400 validation users' NDCG@10 terms.
SCORE_TOLERANCE = 1e-4
NDCG_TOLERANCE = 2 / 400
LOSS_RELATIVE_TOLERANCE = 1e-5  # a per-process loss (half the examples) would differ by sampling noise, ~1e-2

# batch 127 splits 64 / 63 between two processes and leaves a ragged last batch
PARAMS = """\
runs:
  pop: {model: pop}
text_runs:
  head: {model: bert_rs_neural, embeddings: minilm}
train:
  device: cpu
models:
  bert_rs_neural:
    factors: 8
    mlp_layers: [16, 8]
    epochs: 4
    batch_size: 127
    learning_rate: 0.01
    patience: 10
"""


@dataclass
class Run:
    out: Path
    curves: Path
    output: str  # what the command printed

    @property
    def info(self) -> dict:
        return json.loads((self.out / "run.json").read_text())

    def curve_rows(self) -> list[dict]:
        header, *rows = self.curves.read_text().splitlines()
        return [dict(zip(header.split(","), map(float, row.split(",")))) for row in rows]


def train_arguments(env, params: Path, run: str, folder: Path) -> list[str]:
    return ["train", "--prepared", str(env.prepared), "--params", str(params), "--run", run, "--embeddings",
            str(env.cache), "--no-progress", "--out", str(folder / run), "--curves", str(folder / f"{run}.csv")]


def in_process(arguments: list[str]):
    from stages.train import main

    app = typer.Typer()
    app.command()(main)
    return CliRunner().invoke(app, arguments[1:])


@pytest.fixture(scope="module")
def head_runs(ranking_env, tmp_path_factory) -> tuple[Run, Run]:
    """The fusion head trained by one plain process and by `torchrun --nproc_per_node 2` (gloo)."""
    base = tmp_path_factory.mktemp("distributed")
    params = base / "params.yaml"
    params.write_text(PARAMS)
    one, two = base / "one", base / "two"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        plain = in_process(train_arguments(ranking_env, params, "head", one))
    finally:
        torch.set_num_threads(before)
    assert plain.exit_code == 0, plain.output
    # `--` ends torchrun's own options: its argparse would take `--run` for an abbreviation of `--run-path`
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "--", "stages.cli",
               *train_arguments(ranking_env, params, "head", two)]
    done = subprocess.run(command, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return Run(one / "head", one / "head.csv", plain.output), Run(two / "head", two / "head.csv", done.stdout)


def test_two_processes_train_the_model_one_process_trains(ranking_env, head_runs):
    single, double = head_runs
    assert (single.info["processes"], double.info["processes"]) == (1, 2)
    assert double.info["best_epoch"] == single.info["best_epoch"]
    assert abs(double.info["best_valid"]["ndcg@10"] - single.info["best_valid"]["ndcg@10"]) <= NDCG_TOLERANCE
    data = ranking_env.data
    users = torch.arange(data.n_users)
    with torch.no_grad():
        scores = [load_checkpoint(run.out, data).model.score_all(users) for run in head_runs]
    assert torch.allclose(scores[1], scores[0], rtol=0, atol=SCORE_TOLERANCE), (scores[1] - scores[0]).abs().max()


def test_two_processes_write_one_checkpoint_with_the_curves_of_every_example(ranking_env, head_runs):
    single, double = head_runs
    assert double.output.count("best epoch") == 1  # the second process returns before writing or reporting
    assert sorted(p.name for p in double.out.parent.iterdir()) == ["head", "head.csv"]  # nothing half-written
    assert sorted(p.name for p in double.out.iterdir()) == sorted(p.name for p in single.out.iterdir())
    # validation ranked every validation user (each process ranks half of them, then they are gathered)
    assert double.info["best_valid"]["n"] == single.info["best_valid"]["n"] == len(ranking_env.data.valid)
    rows_one, rows_two = single.curve_rows(), double.curve_rows()
    assert [r["epoch"] for r in rows_two] == [r["epoch"] for r in rows_one]
    for one, two in zip(rows_one, rows_two):
        assert two["loss"] == pytest.approx(one["loss"], rel=LOSS_RELATIVE_TOLERANCE)  # the loss over all examples
        assert abs(two["valid_ndcg@10"] - one["valid_ndcg@10"]) <= NDCG_TOLERANCE


@pytest.mark.parametrize("model", ["neumf", "mf"])
def test_the_parts_of_a_batch_backpropagate_the_whole_batch_gradient(model, monkeypatch):
    """What DDP averages over N processes (each one's BatchShareLoss gradient) is the whole batch's mean-loss
    gradient, with uneven parts and with a process whose part is empty."""
    config = RankingConfig(TrainConfig(device="cpu", seed=0)).override(factors=4, mlp_layers=[8, 4])
    net = build_model(RunSpec(model=model), config, n_users=9, n_items=13)
    generator = torch.Generator().manual_seed(0)

    def gradient(loss: torch.Tensor) -> torch.Tensor:
        net.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in net.parameters()])

    for n, processes in [(7, 2), (7, 3), (1, 2), (2, 3)]:
        users, pos = torch.randint(9, (n,), generator=generator), torch.randint(13, (n,), generator=generator)
        neg = torch.randint(13, (n, 3), generator=generator)
        whole = gradient(net.loss(users, pos, neg))
        monkeypatch.setattr(distributed, "processes", lambda: processes)
        parts = []
        for rank in range(processes):
            monkeypatch.setattr(distributed, "rank", lambda: rank)
            parts.append(gradient(distributed.BatchShareLoss(net)(users, pos, neg)))
        monkeypatch.undo()
        torch.testing.assert_close(torch.stack(parts).mean(0), whole, rtol=1e-5, atol=1e-7)


def test_a_closed_form_model_under_torchrun_is_fitted_by_the_first_process_alone(ranking_env, tmp_path, monkeypatch):
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS)
    arguments = train_arguments(ranking_env, params, "pop", tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    other = in_process(arguments)
    assert other.exit_code == 0 and "nothing to do" in other.output
    assert not any(tmp_path.glob("pop*"))
    monkeypatch.setenv("RANK", "0")  # no process group to join: it would wait for a partner that has left
    first = in_process(arguments)
    assert first.exit_code == 0, first.output
    assert json.loads((tmp_path / "pop" / "run.json").read_text())["processes"] == 1
