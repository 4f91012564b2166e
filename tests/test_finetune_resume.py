"""A fine-tune killed with SIGKILL after a checkpoint and rerun ends with the same bytes as an uninterrupted run
(MLM+NSP and contrastive, one process and two torchrun processes); two processes give the single-process metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.finetune_fixtures import entry_command, folder_bytes, kill_after_checkpoint, run_to_completion

MLM_NSP = dict(max_steps=6, batch_size=4, max_length=32, eval_share=0.2, save_steps=2, warmup_ratio=0.0)
CONTRASTIVE = dict(max_steps=6, contrastive_batch_size=2, max_length=32, eval_share=0.2, save_steps=2,
                   warmup_ratio=0.0)


def metrics_of(out: Path) -> dict:
    return json.loads(Path(f"{out}.metrics.json").read_text())


def uninterrupted_and_resumed(tmp_path: Path, objective: str, config: dict, prepared: Path, base: Path,
                              processes: int = 1) -> tuple[Path, Path]:
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run_to_completion(entry_command(objective, prepared, base, whole, config, processes))
    flag = tmp_path / "checkpoint-saved"
    kill_after_checkpoint(entry_command(objective, prepared, base, resumed, config, processes,
                                        pause_after_step=2, flag=flag, port=29512), flag)
    assert not resumed.exists() and any(Path(f"{resumed}.work").rglob("checkpoint-2"))
    # and a later checkpoint a kill in the middle of saving left without its trainer state: passed over
    run_dir = next(Path(f"{resumed}.work").rglob("checkpoint-2")).parent
    (run_dir / "checkpoint-4").mkdir()
    (run_dir / "checkpoint-4" / "model.safetensors").write_bytes(b"half")
    run_to_completion(entry_command(objective, prepared, base, resumed, config, processes))
    assert metrics_of(resumed)["resumed_from"] == "checkpoint-2" and metrics_of(whole)["resumed_from"] is None
    return whole, resumed


@pytest.mark.parametrize("objective, config", [("mlm_nsp", MLM_NSP), ("contrastive", CONTRASTIVE)])
def test_killed_finetune_resumes_to_the_bytes_of_an_uninterrupted_run(objective, config, toy_prepared,
                                                                      tiny_encoder_dir, tmp_path):
    whole, resumed = uninterrupted_and_resumed(tmp_path, objective, config, toy_prepared, tiny_encoder_dir)
    assert folder_bytes(resumed) == folder_bytes(whole)
    assert metrics_of(resumed)["after"] == metrics_of(whole)["after"]


def test_two_torchrun_processes_write_one_folder_with_the_single_process_metrics(toy_prepared, tiny_encoder_dir,
                                                                                tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run_to_completion(entry_command("mlm_nsp", toy_prepared, tiny_encoder_dir, one, MLM_NSP))
    run_to_completion(entry_command("mlm_nsp", toy_prepared, tiny_encoder_dir, two, MLM_NSP, processes=2))
    single, double = metrics_of(one), metrics_of(two)
    assert double["processes"] == 2 and single["processes"] == 1
    assert sorted(folder_bytes(two)) == sorted(folder_bytes(one))  # the same files, written once
    assert not Path(f"{two}.work").exists()
    # the same model measured on the whole held-out set with the same masks: exactly the same numbers
    assert double["before"] == single["before"]
    # the same global batches and steps; only the masks drawn per process differ
    assert double["steps"] == single["steps"] and double["train_pairs"] == single["train_pairs"]
    assert abs(double["after"]["mlm_loss"] - single["after"]["mlm_loss"]) < 0.05 * single["after"]["mlm_loss"]
    assert double["after"]["mlm_loss"] < double["before"]["mlm_loss"]


@pytest.mark.slow
def test_killed_two_process_finetune_resumes_to_the_bytes_of_an_uninterrupted_one(toy_prepared, tiny_encoder_dir,
                                                                                  tmp_path):
    whole, resumed = uninterrupted_and_resumed(tmp_path, "mlm_nsp", MLM_NSP, toy_prepared, tiny_encoder_dir,
                                               processes=2)
    assert folder_bytes(resumed) == folder_bytes(whole)
    assert metrics_of(resumed)["after"] == metrics_of(whole)["after"]
