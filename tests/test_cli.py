"""The assembled `bertrs` command: every stage is a sub-command, and bad input ends in one clear line, exit code 2."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from pipeline.data.prepared import load_reviews
from stages.cli import app

runner = CliRunner()


def prepare_with_defaults(tmp_path, dump):
    """`bertrs prepare` of `dump` with params.yaml's defaults, into tmp_path/p."""
    params = tmp_path / "params.yaml"
    params.write_text("prepare: {}\n")
    return runner.invoke(app, ["prepare", "--input", str(dump), "--out", str(tmp_path / "p"), "--params", str(params)])


# each command with an option only it takes: its own --help must show it
OWN_OPTION = {"prepare": "--input", "generate": "--users", "finetune": "--encoder", "embed": "--encoder-dir",
              "train": "--run", "evaluate": "--models", "recommend": "--user"}


def test_every_stage_is_a_sub_command_with_its_own_help():
    for command, option in OWN_OPTION.items():
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0, (command, result.output)
        assert f" {command} [OPTIONS]" in result.output and option in result.output, (command, result.output)
    result = runner.invoke(app, ["cache", "info", "--help"])
    assert result.exit_code == 0 and " cache info [OPTIONS]" in result.output
    assert runner.invoke(app, ["nope", "--help"]).exit_code == 2


def test_generate_then_prepare_from_the_command_line(tmp_path):
    raw = tmp_path / "raw.json.gz"
    assert runner.invoke(app, ["generate", str(raw), "--users", "30", "--items", "20"]).exit_code == 0
    params = tmp_path / "params.yaml"
    params.write_text("prepare:\n  min_user_reviews: 3\n  min_item_reviews: 2\n  eval_negatives: 5\n")
    result = runner.invoke(app, ["prepare", "--input", str(raw), "--out", str(tmp_path / "p"), "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert "prepared" in result.output
    table1 = json.loads((tmp_path / "p" / "stats.json").read_text())["table1"]
    reviews = load_reviews(tmp_path / "p", ["user_idx", "item_idx"])
    per_user = np.bincount(reviews.column("user_idx").to_numpy())
    per_item = np.bincount(reviews.column("item_idx").to_numpy())
    assert (table1["users"], table1["items"], table1["reviews"]) == (len(per_user), len(per_item), reviews.num_rows)
    assert 0 < table1["users"] <= 30 and per_user.min() >= 3 and per_item.min() >= 2  # the settings it was given


def test_a_bad_parameter_is_one_line_naming_the_key(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("prepare:\n  min_user_reviewz: 3\n")
    result = runner.invoke(app, ["prepare", "--input", str(tmp_path), "--out", str(tmp_path / "p"),
                                 "--params", str(params)])
    assert result.exit_code == 2
    assert "prepare.min_user_reviewz: unknown key" in result.output
    assert "Traceback" not in result.output


def test_a_missing_input_is_one_line_naming_the_file(tmp_path):
    result = prepare_with_defaults(tmp_path, tmp_path / "absent.json")
    assert result.exit_code == 2
    assert "absent.json: input file not found" in result.output


def test_a_damaged_prepared_file_is_one_line_naming_it_and_the_stage_to_rerun(prepared_dir, tmp_path):
    import shutil

    prepared = shutil.copytree(prepared_dir, tmp_path / "prepared")
    train_file = prepared / "train.parquet"
    train_file.write_bytes(train_file.read_bytes()[: train_file.stat().st_size // 2])  # a copy cut short
    params = tmp_path / "params.yaml"
    params.write_text("runs:\n  pop: {model: pop}\n")
    result = runner.invoke(app, ["train", "--prepared", str(prepared), "--run", "pop", "--out", str(tmp_path / "m"),
                                 "--params", str(params), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert f"{train_file}: not a readable Parquet file" in result.output and "rerun the stage" in result.output
    assert not (tmp_path / "m").exists()


def test_a_review_dump_in_parquet_that_is_damaged_is_named(tmp_path):
    dump = tmp_path / "reviews.parquet"
    dump.write_bytes(b"PAR1 not really parquet")
    result = prepare_with_defaults(tmp_path, dump)
    assert result.exit_code == 2, result.output
    assert f"{dump}: not a readable Parquet file" in result.output
    assert not (tmp_path / "p").exists()


def test_an_output_folder_that_holds_the_input_is_refused_and_the_input_kept(tmp_path):
    dumps = tmp_path / "dumps"
    dumps.mkdir()
    assert runner.invoke(app, ["generate", str(dumps / "raw.json.gz"), "--users", "30", "--items", "20"]).exit_code == 0
    params = tmp_path / "params.yaml"
    params.write_text("prepare:\n  min_user_reviews: 3\n  min_item_reviews: 2\n  eval_negatives: 5\n")
    result = runner.invoke(app, ["prepare", "--input", str(dumps), "--out", str(dumps), "--params", str(params)])
    assert result.exit_code == 2, result.output
    assert f"--out {dumps}: holds the input {dumps / 'raw.json.gz'}" in result.output
    assert (dumps / "raw.json.gz").is_file()


def test_an_output_path_that_is_an_existing_file_is_refused_and_the_file_kept(tmp_path):
    dump = tmp_path / "raw.json.gz"
    assert runner.invoke(app, ["generate", str(dump), "--users", "30", "--items", "20"]).exit_code == 0
    afile = tmp_path / "notes.txt"
    afile.write_text("a user's own file")
    params = tmp_path / "params.yaml"
    params.write_text("prepare: {}\n")
    result = runner.invoke(app, ["prepare", "--input", str(dump), "--out", str(afile), "--params", str(params)])
    assert result.exit_code == 2, result.output
    assert f"--out {afile}: is an existing file, not a folder" in result.output
    assert afile.read_text() == "a user's own file"


def test_an_unreadable_first_record_is_named_by_its_own_line(tmp_path):
    dump = tmp_path / "late.json"
    dump.write_text("\n\n\nthis is not a review\n")
    result = prepare_with_defaults(tmp_path, dump)
    assert result.exit_code == 2 and f"{dump}:4: cannot detect the format" in result.output


def test_an_empty_csv_is_called_empty(tmp_path):
    dump = tmp_path / "reviews.csv"
    dump.write_text("")
    result = prepare_with_defaults(tmp_path, dump)
    assert result.exit_code == 2 and f"{dump}: empty file" in result.output
