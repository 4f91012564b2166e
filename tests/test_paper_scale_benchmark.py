"""The paper-scale benchmark finishes its table over several sittings: `--stages` runs a stage and exactly the
stages it reads from, a stage measured by an earlier sitting keeps its row until measured again, and a workspace
follows the checkout's committed code without losing the outputs it spent hours on."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import paper_scale
from benchmarks.paper_scale import (
    EVALUATE_TRAINED,
    SCALABLE_EVALUATE,
    SCALABLE_TRAIN,
    earlier_rows,
    needed_stages,
)

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


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_a_workspace_behind_the_checkout_moves_to_its_commit_and_keeps_its_stage_outputs(tmp_path, monkeypatch):
    root, clone = tmp_path / "root", tmp_path / "clone"
    root.mkdir()
    git(root, "init", "-q")
    (root / ".gitignore").write_text("data/\n")
    (root / "hybrid.py").write_text("old\n")
    git(root, "add", ".")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "old")
    git(tmp_path, "clone", "-q", str(root), str(clone))
    (clone / "data").mkdir()
    (clone / "data" / "embeddings.parquet").write_text("an hour of embedding")  # a stage output, ignored by git
    (clone / "hybrid.py").write_text("the workspace's own edit\n")
    (root / "hybrid.py").write_text("new\n")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "new")
    monkeypatch.setattr(paper_scale, "ROOT", root)
    paper_scale.follow_committed_code(clone)
    assert git(clone, "rev-parse", "HEAD") == git(root, "rev-parse", "HEAD")
    assert (clone / "hybrid.py").read_text() == "new\n"
    assert (clone / "data" / "embeddings.parquet").read_text() == "an hour of embedding"


def test_a_stage_measured_again_is_run_although_dvc_thinks_it_up_to_date():
    assert "--force" in paper_scale.dag_command("train_text@bert_rs", again=True)
    assert "--force" not in paper_scale.dag_command("train_text@bert_rs")


def test_a_dense_runs_row_sets_the_memory_estimate_beside_its_measured_peak(tmp_path):
    """docs/scale.md quotes the estimate next to each dense model's paper-size peak: the row carries it."""
    from pipeline.config import RankingConfig
    from pipeline.ranking.registry import fit_memory
    from pipeline.ranking.training.memory import GB, Shape

    for run, spec, extra in (("bert_rs", "bert_rs", {"bert_rs_solver": "dense", "dim": 384}),
                             ("ease", "ease", {"bert_rs_solver": None})):
        folder = tmp_path / "data" / "models" / run
        folder.mkdir(parents=True)
        (folder / "run.json").write_text(json.dumps({"spec": {"model": spec}, "n_users": 3764, "n_items": 17033,
                                                     **extra}))
    dense = fit_memory("bert_rs", Shape(3764, 17033, 0, 384),
                       RankingConfig().override("bert_rs", solver="dense"))[0] / GB
    assert paper_scale.run_note(tmp_path, "train_text@bert_rs") == f"solver dense; memory estimate {dense:.1f} GB"
    ease = fit_memory("ease", Shape(3764, 17033, 0, 0))[0] / GB
    assert paper_scale.run_note(tmp_path, "train@ease") == f"memory estimate {ease:.1f} GB"


def test_an_encoder_pass_counts_each_reviews_arithmetic_at_the_length_embed_truncates_it_to(tmp_path,
                                                                                            tiny_encoder_dir):
    """Per layer, the four attention projections and the two feed-forward products cost 2 L h (4 h + 2 I) for a
    review of L tokens, attention itself 4 L^2 h; the pooler 2 h^2 once. Reviews longer than max_length count at
    max_length, and padding to a batch's longest review is not counted."""
    from pipeline.text.encode import load_encoder
    from tests.text_fixtures import tiny_bert_config, write_prepared

    texts = ["good album", "good album", "the best band " * 30]  # two reviews of one length, one truncated
    write_prepared(tmp_path / "data" / "prepared", [(0, 0, "train", texts[0]), (1, 0, "train", texts[1]),
                                                    (1, 1, "test", texts[2])], n_users=2, n_items=2)
    encoder = load_encoder(tiny_encoder_dir, pooling="mean", max_length=16)
    lengths = [len(ids) for ids in encoder.tokenizer(texts, truncation=True, max_length=16)["input_ids"]]
    assert lengths[0] < 16 and lengths[2] == 16
    config = tiny_bert_config(encoder.tokenizer.vocab_size)
    h, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers

    def review(length: int) -> int:
        return layers * (2 * length * h * (4 * h + 2 * inner) + 4 * length**2 * h) + 2 * h * h

    counted = paper_scale.encoder_pass_flops(tmp_path, str(tiny_encoder_dir), max_length=16)
    assert counted == {"flops": 2 * review(lengths[0]) + review(16), "reviews": 3, "max_length": 16,
                       "tokens": sum(lengths)}


def test_the_report_quotes_the_dags_own_table_when_the_clone_holds_the_samples_again(tmp_path):
    """Moving the workspace to a later commit restores the clone's git-tracked reports/ to the bundled sample's;
    the paper-size table is the copy kept in the work folder."""
    clone = tmp_path / "repo"
    (clone / "reports").mkdir(parents=True)
    (clone / "reports" / "comparison.md").write_text("the bundled sample's table\n")
    (tmp_path / paper_scale.DAG_TABLE).write_text("the paper-size table\n")
    stages = ["prepare", "evaluate"]
    done = {s: {"seconds": 60.0, "cpu_seconds": 60.0, "peak_gb": 1.0} for s in stages}
    paper_scale.report(clone, stages, done, tmp_path)
    written = (tmp_path / "paper_scale.md").read_text()
    assert "the paper-size table" in written and "the bundled sample's table" not in written


def test_each_training_stage_shows_its_runs_test_ndcg_beside_its_minutes_once_the_dag_is_evaluated(tmp_path):
    clone = tmp_path / "repo"
    clone.mkdir()
    (clone / "metrics.json").write_text(json.dumps({"ease": {"full": {"ndcg@10": 0.5}}}))  # the sample's, after a move
    (tmp_path / paper_scale.DAG_METRICS).write_text(json.dumps({"ease": {"full": {"ndcg@10": 0.0512}},
                                                                "bert_rs": {"full": {"ndcg@10": 0.0634}}}))
    stages = ["prepare", "train@ease", "train_text@bert_rs", "evaluate"]
    done = {s: {"seconds": 60.0, "cpu_seconds": 60.0, "peak_gb": 1.0} for s in stages}
    paper_scale.report(clone, stages, done, tmp_path)
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")
            for line in (tmp_path / "paper_scale.md").read_text().splitlines() if line.startswith("| ")}
    assert rows["train@ease"][4] == "0.0512" and rows["train_text@bert_rs"][4] == "0.0634"
    assert rows["prepare"][4] == ""
    done["evaluate"]["finished_at"], done["train@ease"]["finished_at"] = 100.0, 200.0  # ease trained again since
    paper_scale.report(clone, stages, done, tmp_path)
    written = (tmp_path / "paper_scale.md").read_text()
    assert "0.0512" not in written and "0.0634" in written
    del done["evaluate"]  # before the DAG's evaluate the metrics are not this run's
    paper_scale.report(clone, stages, done, tmp_path)
    assert "0.0634" not in (tmp_path / "paper_scale.md").read_text()


def test_runs_trained_short_of_the_whole_dag_show_their_test_ndcg_once_the_step_beside_it_scores_them(tmp_path):
    """`--stages train@ease ... "beside: evaluate the runs trained so far"`: quality at the paper's shape without
    the hours every other run of the DAG would take first; the step is no stage a complete run waits for."""
    clone = tmp_path / "repo"
    clone.mkdir()
    (tmp_path / paper_scale.DAG_METRICS).write_text(json.dumps({"ease": {"full": {"ndcg@10": 0.0512}}}))
    stages = ["prepare", "train@ease", "train@mf", "evaluate", EVALUATE_TRAINED]
    done = {s: {"seconds": 60.0, "cpu_seconds": 60.0, "peak_gb": 1.0, "finished_at": t}
            for s, t in [("prepare", 1.0), ("train@ease", 2.0), (EVALUATE_TRAINED, 3.0)]}
    paper_scale.report(clone, stages, done, tmp_path)
    written = (tmp_path / "paper_scale.md").read_text()
    assert "| train@ease | 1.0 | 1.0 | 1.00 | 0.0512 |" in written
    assert "Incomplete: 2 of 4 stages not run yet" in written
    assert json.loads((tmp_path / "paper_scale.json").read_text())["pending"] == ["train@mf", "evaluate"]
    del done[EVALUATE_TRAINED]
    done["evaluate"] = done["train@mf"] = {"seconds": 60.0, "cpu_seconds": 60.0, "peak_gb": 1.0, "finished_at": 4.0}
    paper_scale.report(clone, stages, done, tmp_path)
    assert json.loads((tmp_path / "paper_scale.json").read_text())["meta"]["complete"]
    assert EVALUATE_TRAINED not in (tmp_path / "paper_scale.md").read_text()


@needs_dvc
def test_scoring_the_runs_trained_so_far_needs_no_stage_before_it():
    env = {**os.environ, "PATH": f"{DVC.parent}:{os.environ['PATH']}"}
    assert needed_stages(ROOT, env, ["train@pop", EVALUATE_TRAINED], STAGES + [EVALUATE_TRAINED]) == [
        "prepare", "train@pop", EVALUATE_TRAINED]


def test_a_bert_rs_row_says_what_its_search_chose_and_the_scalable_one_its_passes(tmp_path):
    """docs/scale.md quotes the shuffled run's choice and the scalable step's passes from the results file."""
    dense = tmp_path / "repo" / "data" / "models" / "bert_rs_shuffled"
    dense.mkdir(parents=True)
    (dense / "run.json").write_text(json.dumps({
        "spec": {"model": "bert_rs"}, "n_users": 30, "n_items": 20, "dim": 8, "bert_rs_solver": "dense",
        "chosen": {"ease_lambda": 1000.0, "side_weight": 0.0, "regulariser": "ease", "text_match":
                   "user_profile_recent", "text_weight": 0.5, "pop_weight": 0.0},
        "selection": {"valid_ndcg@10": 0.005428, "cross_fitted_gain": 0.000547}}))
    note = paper_scale.run_note(tmp_path / "repo", "train_text@bert_rs_shuffled")
    assert "chose lambda 1000, side weight 0, ease, user_profile_recent w 0.5, popularity 0" in note
    assert "validation NDCG@10 0.005428, cross-fitted gain 0.000547" in note
    scalable = tmp_path / "scalable" / "models" / "bert_rs_scalable"
    scalable.mkdir(parents=True)
    (scalable / "run.json").write_text(json.dumps({
        "spec": {"model": "bert_rs"}, "bert_rs_solver": "scalable",
        "chosen": {"solver": "scalable", "epochs": 9, "epochs_scored_on_validation": 10}}))
    assert paper_scale.run_note(tmp_path / "repo", SCALABLE_TRAIN) == \
        "solver scalable; passes kept 9 of 10 scored on validation"


def test_the_report_says_where_the_dense_stages_minutes_go_from_the_profile_beside_it(tmp_path):
    (tmp_path / "search_profile.json").write_text(json.dumps({
        "meta": {"date": "2026-12-07", "code": "abc1234", "command": "python benchmarks/search_profile.py --screen on",
                 "load_average_start": [1.0, 1.0, 1.0], "load_average_end": [2.0, 2.0, 2.0]},
        "runs": {"screened": {"total_seconds": 600.0, "search_seconds": 480.0, "peak_gb": 8.9,
                              "steps_seconds": {"solves": 60.0, "ranking": 240.0, "other": 300.0},
                              "calls": {"solves": 1, "ranking": 137}}}}))
    lines = paper_scale.search_profile_lines(tmp_path / "search_profile.json")
    assert "Whole stage 10.0 min, of which the validation search 8.0; peak RSS 8.9 GB." in lines[2]
    assert lines[-4:-1] == ["| other | 5.0 | 50% |  |", "| ranking | 4.0 | 40% | 137 |", "| solves | 1.0 | 10% | 1 |"]
    assert paper_scale.search_profile_lines(tmp_path / "absent.json") == []


def test_a_workspace_refuses_data_generated_from_another_source(tmp_path, monkeypatch):
    clone = tmp_path / "repo"
    (clone / ".git").mkdir(parents=True)
    (clone / "params.yaml").write_text("prepare:\n  input: data/paper_scale/reviews.json.gz\n")
    monkeypatch.setattr(paper_scale, "follow_committed_code", lambda clone: None)
    monkeypatch.setattr(paper_scale, "paper_shaped_reviews", lambda path: path.write_text("generated"))
    paper_scale.workspace(tmp_path)  # the paper-shaped generator's data, recorded as such
    with pytest.raises(SystemExit, match="was generated from"):
        paper_scale.workspace(tmp_path, like=tmp_path / "prepared")
    paper_scale.workspace(tmp_path)  # the same source again is fine


def test_a_twin_generated_before_real_text_came_counts_as_planted_text(tmp_path, monkeypatch):
    clone = tmp_path / "repo"
    (clone / ".git").mkdir(parents=True)
    (clone / "params.yaml").write_text("prepare:\n  input: data/paper_scale/reviews.json.gz\n")
    data = clone / "data" / "paper_scale"
    data.mkdir(parents=True)
    (data / "reviews.json.gz").write_text("generated")
    like = tmp_path / "prepared"
    (data / "source.json").write_text(json.dumps({"like": str(like), "shape": list(paper_scale.LIKE_SHAPE)}))
    monkeypatch.setattr(paper_scale, "follow_committed_code", lambda clone: None)
    paper_scale.workspace(tmp_path, like=like, like_text="planted")  # resumes the run made with planted words
    with pytest.raises(SystemExit, match="'text': 'planted'.*'text': 'real'"):
        paper_scale.workspace(tmp_path, like=like)  # the default, real text, is another twin
