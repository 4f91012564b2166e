"""The run.json contract (pipeline/ranking/checkpoint.py) against runs this version cannot rebuild: a run trained
before per-model settings existed stops `evaluate`, `recommend` and `serve` with one line naming the file, the
missing key and the fix, exit code 2 (docs/errors.md), instead of a KeyError traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.data.prepared import load_prepared
from pipeline.io import DataError
from pipeline.ranking.checkpoint import RUN_FILE, load_checkpoint
from stages.cli import app


def old_run(prepared: Path) -> dict:
    """A pop run's run.json as `bertrs train` wrote it before per-model settings: one "train" bag holding every
    model's knobs, no "model_settings"."""
    data = load_prepared(prepared)
    return {
        "run": "pop",
        "spec": {"model": "pop", "embeddings": None, "shuffle": False},
        "train": {"factors": 32, "mlp_layers": [128, 64, 32], "num_negatives": 1, "epochs": 60, "batch_size": 256,
                  "learning_rate": 0.001, "mf_loss": "bpr", "ease_lambda": 500.0, "text_weights": [0.0, 0.25, 0.5],
                  "bert_rs_lambdas": [10.0, 100.0], "device": "auto", "seed": 42, "bert_rs_solver": "auto"},
        "data_fingerprint": data.fingerprint,
        "n_users": data.n_users,
        "n_items": data.n_items,
        "dim": None,
        "embeddings": None,
        "best_epoch": 0,
        "best_valid": {"hr@10": 0.1, "ndcg@10": 0.05, "n": data.n_users},
        "chosen": None,
        "bert_rs_solver": None,
        "weights": "model.safetensors",
        "versions": {"torch": "2.3.0", "python": "3.11.9"},
    }


@pytest.fixture
def old_project(tmp_path, prepared_dir, monkeypatch) -> Path:
    """A project folder (no params.yaml needed by recommend and serve) whose only run is an old-format pop run."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "pop").mkdir(parents=True)
    (tmp_path / "models" / "pop" / RUN_FILE).write_text(json.dumps(old_run(prepared_dir)))
    return tmp_path


def assert_names_the_file_the_key_and_the_fix(message: str, run_json: Path) -> None:
    assert str(run_json) in message
    assert "'model_settings'" in message and "before each model had its own settings section" in message
    assert "`bertrs train`" in message and "`dvc repro`" in message


def test_loading_an_old_run_names_the_file_the_missing_key_and_the_fix(old_project, prepared_dir):
    with pytest.raises(DataError) as error:
        load_checkpoint(old_project / "models" / "pop", load_prepared(prepared_dir))
    assert_names_the_file_the_key_and_the_fix(str(error.value), old_project / "models" / "pop" / RUN_FILE)


def test_a_run_json_missing_other_keys_names_each_of_them(tmp_path, prepared_dir):
    (tmp_path / RUN_FILE).write_text(json.dumps({"run": "x", "train": {}}))
    with pytest.raises(DataError, match=r"has no 'spec', 'model_settings', 'data_fingerprint', 'n_users', 'n_items'"):
        load_checkpoint(tmp_path, load_prepared(prepared_dir))
    (tmp_path / RUN_FILE).write_text("[]")
    with pytest.raises(DataError, match="expected a JSON object"):
        load_checkpoint(tmp_path, load_prepared(prepared_dir))


def commands(prepared: Path) -> dict[str, list[str]]:
    model = ["--model-dir", "models/pop", "--prepared", str(prepared)]
    return {
        "evaluate": ["evaluate", "--prepared", str(prepared), "--models", "models", "--params", "params.yaml",
                     "--metrics", "metrics.json", "--table", "comparison.md", "--plots-dir", "at_k"],
        "recommend": ["recommend", *model, "--user", "any"],
        "serve": ["serve", *model, "--no-search"],
    }


@pytest.mark.parametrize("command", ["evaluate", "recommend", "serve"])
def test_every_reader_stops_on_an_old_run_with_exit_2_and_writes_nothing(old_project, prepared_dir, command):
    if command == "serve":
        pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install -e '.[serve]')")
    (old_project / "params.yaml").write_text("runs:\n  pop: {model: pop}\n")
    before = sorted(p.name for p in old_project.rglob("*"))
    result = CliRunner().invoke(app, commands(prepared_dir)[command])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert line.startswith("error: ") and "\n" not in line and "Traceback" not in line
    assert_names_the_file_the_key_and_the_fix(line, Path("models") / "pop" / RUN_FILE)
    assert sorted(p.name for p in old_project.rglob("*")) == before
