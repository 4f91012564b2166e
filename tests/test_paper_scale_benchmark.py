"""The paper-scale benchmark finishes its table over several sittings: `--stages` runs a stage and exactly the
stages it reads from, and a stage measured by an earlier sitting keeps its row until measured again."""

import json
import os
import sys
from pathlib import Path

import pytest

from benchmarks.paper_scale import SCALABLE_EVALUATE, SCALABLE_TRAIN, earlier_rows, needed_stages

ROOT = Path(__file__).resolve().parents[1]
DVC = Path(sys.executable).parent / "dvc"
STAGES = ["prepare", "finetune@minilm", "finetune@minilm_mean", "finetune@minilm_ft", "embed@minilm_ft",
          "embed_shared@minilm", "train@pop", "train@ease", "train_text@bert_rs", "train_text@bert_rs_paper",
          "evaluate", SCALABLE_TRAIN, SCALABLE_EVALUATE]

needs_dvc = pytest.mark.skipif(not DVC.is_file(), reason="dvc is not installed beside this Python")


@needs_dvc
def test_a_text_run_needs_only_the_encoder_and_embedding_pass_its_cache_comes_from():
    env = {**os.environ, "PATH": f"{DVC.parent}:{os.environ['PATH']}"}
    assert needed_stages(ROOT, env, ["train_text@bert_rs"], STAGES) == [
        "prepare", "finetune@minilm", "embed_shared@minilm", "train_text@bert_rs"]


@needs_dvc
def test_the_scalable_comparison_needs_the_dense_run_and_its_own_training_step():
    env = {**os.environ, "PATH": f"{DVC.parent}:{os.environ['PATH']}"}
    assert needed_stages(ROOT, env, [SCALABLE_EVALUATE], STAGES) == [
        "prepare", "finetune@minilm", "embed_shared@minilm", "train_text@bert_rs", SCALABLE_TRAIN, SCALABLE_EVALUATE]


def test_an_unknown_stage_is_refused_with_the_list_of_stages():
    with pytest.raises(SystemExit, match="no stage named train_text@bert_rx; the stages are: prepare"):
        needed_stages(ROOT, dict(os.environ), ["train_text@bert_rx"], STAGES)


def test_rows_of_an_earlier_sitting_keep_their_date_and_drop_stages_the_dag_no_longer_has(tmp_path):
    (tmp_path / "paper_scale.json").write_text(json.dumps({
        "meta": {"date": "2026-11-27"},
        "stages": {"train@ease": {"seconds": 600.0, "peak_gb": 10.2},
                   "train@mf": {"seconds": 60.0, "peak_gb": 0.7, "date": "2026-11-26"},
                   "train@retired": {"seconds": 1.0, "peak_gb": 0.1}}}))
    rows = earlier_rows(tmp_path, ["train@ease", "train@mf"])
    assert rows == {"train@ease": {"seconds": 600.0, "peak_gb": 10.2, "date": "on or before 2026-11-27"},
                    "train@mf": {"seconds": 60.0, "peak_gb": 0.7, "date": "2026-11-26"}}


def test_with_no_results_file_there_is_nothing_earlier(tmp_path):
    assert earlier_rows(tmp_path, STAGES) == {}
