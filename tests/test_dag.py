"""The real DVC DAG on a tiny configuration: a temporary git repo with this project's dvc.yaml, stages and library,
a tiny local BERT and a small generated dataset.

Specifies that `dvc repro` builds every output, that a second run does nothing, that a change reruns exactly the
stages that read it (a shared train setting: every run; one model's setting: that model's runs; one encoder: its
stages and the runs that read its cache), and that swapping a run's embedding cache changes the table's cache
column and its metrics. Every test starts from the same reproduced state, whatever ran before it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.data.synthetic import SyntheticSpec, write_synthetic
from pipeline.data.prepared import load_prepared
from pipeline.embeddings.cache import load_profiles
from pipeline.ranking.evaluate import evaluate
from pipeline.ranking.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def dvc(repo: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([str(BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def set_param(repo: Path, dotted: str, value) -> None:
    params = json.loads(json.dumps(yaml.safe_load((repo / "params.yaml").read_text())))  # YAML aliases unshared
    node = params
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def dag_repo(tmp_path_factory, tiny_encoder_master) -> Path:
    repo = tmp_path_factory.mktemp("dag") / "repo"
    repo.mkdir()
    for folder in ("pipeline", "stages"):
        shutil.copytree(REPO / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    write_synthetic(repo / "data" / "raw" / "reviews.json.gz", SyntheticSpec(n_users=40, n_items=25, seed=5))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["prepare"].update(input="data/raw", min_user_reviews=3, min_item_reviews=2, eval_negatives=10)
    tiny = str(tiny_encoder_master)
    params["encoders"] = {"tiny": {"model": tiny, "finetune": False},
                          "tiny_ft": {"model": tiny, "finetune": True}}
    params["finetune"].update(max_steps=3, batch_size=4, max_length=32, max_eval_pairs=8, save_steps=1,
                              learning_rate=5e-3)  # large enough that the tuned encoder really differs
    params["embed"].update(max_length=32, batch_size=16, shard_size=32, shared_passes={},
                           single_passes=["tiny", "tiny_ft"])
    params["runs"] = {"pop": {"model": "pop"}, "neumf": {"model": "neumf"}}
    # text alone: with a random tiny BERT, only a text-only model is sure to rank differently
    params["text_runs"] = {"text": {"model": "semantic_only", "embeddings": "tiny"},
                           "text_ft": {"model": "semantic_only", "embeddings": "tiny_ft"}}
    params["train"].update(device="cpu")
    params = json.loads(json.dumps(params))  # YAML aliases unshared: each model's section stands alone
    for name in ("neumf", "semantic_only"):
        params["models"][name].update(epochs=2, factors=8, mlp_layers=[16, 8], batch_size=64)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["git", "init", "-q"], ["git", "config", "user.email", "t@t"], ["git", "config", "user.name", "t"]):
        subprocess.run(command, cwd=repo, check=True)
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")
    return repo


@pytest.fixture(scope="module")
def first_repro(dag_repo) -> str:
    output = dvc(dag_repo, "repro")
    (dag_repo / "params.built.yaml").write_text((dag_repo / "params.yaml").read_text())
    return output


@pytest.fixture
def built(dag_repo, first_repro) -> Path:
    """The repo as the first repro left it: params restored and reproduced, so no test sees another's changes."""
    (dag_repo / "params.yaml").write_text((dag_repo / "params.built.yaml").read_text())
    dvc(dag_repo, "repro")
    return dag_repo


def test_repro_builds_every_stage_and_valid_outputs(dag_repo, first_repro):
    assert ran(first_repro) == {"prepare", "finetune@tiny", "finetune@tiny_ft", "embed@tiny", "embed@tiny_ft",
                                "train@pop", "train@neumf", "train_text@text", "train_text@text_ft", "evaluate"}
    data = load_prepared(dag_repo / "data" / "prepared")
    for name in ("tiny", "tiny_ft"):
        profiles = load_profiles(dag_repo / "data" / "embeddings" / name, data_fingerprint=data.fingerprint,
                                 n_users=data.n_users, n_items=data.n_items)
        assert profiles.dim == 32
    finetuned = json.loads((dag_repo / "metrics" / "finetune" / "tiny_ft.json").read_text())
    assert finetuned["finetuned"] is True and "nsp_accuracy" in finetuned["after"]
    metrics = json.loads((dag_repo / "metrics.json").read_text())
    assert set(metrics) == {"pop", "neumf", "text", "text_ft"}
    for run in metrics:  # the reported numbers are the trained checkpoints' test metrics, recomputed here
        model = load_checkpoint(dag_repo / "data" / "models" / run, data,
                                cache_path=dag_repo / metrics[run]["cache"] if metrics[run]["cache"] else None).model
        expected = evaluate(model, data, "test", ks=[10], protocols=["full"])["full"]
        assert metrics[run]["full"]["ndcg@10"] == pytest.approx(expected["ndcg@10"]), run
        assert metrics[run]["full"]["n"] == len(data.test)
    assert (dag_repo / "metrics" / "curves" / "neumf.csv").is_file()
    assert "data/embeddings/tiny" in (dag_repo / "reports" / "comparison.md").read_text()
    assert "Data and pipelines are up to date" in dvc(dag_repo, "status")


def test_a_second_repro_does_nothing(built):
    assert ran(dvc(built, "repro")) == set()


def test_rerunning_the_fine_tune_on_the_same_inputs_writes_the_same_bytes_metrics_included(built):
    """A fresh clone's `dvc repro` must leave `git status` clean: no clock reading or path may reach an output."""
    lock = (built / "dvc.lock").read_text()
    metrics = (built / "metrics" / "finetune" / "tiny_ft.json").read_text()
    assert ran(dvc(built, "repro", "--force", "--single-item", "finetune@tiny_ft")) == {"finetune@tiny_ft"}
    assert (built / "metrics" / "finetune" / "tiny_ft.json").read_text() == metrics
    assert (built / "dvc.lock").read_text() == lock


def test_a_shared_train_setting_reruns_every_run_and_nothing_upstream(built):
    set_param(built, "train.seed", 7)
    assert ran(dvc(built, "repro")) == {"train@pop", "train@neumf", "train_text@text", "train_text@text_ft",
                                        "evaluate"}


def test_a_neumf_setting_reruns_only_neumf_and_evaluate(built):
    set_param(built, "models.neumf.epochs", 3)
    assert ran(dvc(built, "repro")) == {"train@neumf", "evaluate"}


def test_an_encoder_setting_reruns_its_stages_the_runs_that_read_it_and_evaluate(built):
    set_param(built, "encoders.tiny.pooling", "cls")
    assert ran(dvc(built, "repro")) == {"finetune@tiny", "embed@tiny", "train_text@text", "evaluate"}


def test_swapping_the_cache_changes_the_table_and_the_metrics(built):
    before = json.loads((built / "metrics.json").read_text())["text"]
    set_param(built, "text_runs.text.embeddings", "tiny_ft")
    assert ran(dvc(built, "repro")) == {"train_text@text", "evaluate"}
    after = json.loads((built / "metrics.json").read_text())["text"]
    assert before["cache"].endswith("data/embeddings/tiny") and after["cache"].endswith("data/embeddings/tiny_ft")
    assert before["cache_fingerprint"] != after["cache_fingerprint"]
    assert before["full"] != after["full"] or before["sampled"] != after["sampled"]
    assert "data/embeddings/tiny_ft" in (built / "reports" / "comparison.md").read_text()
