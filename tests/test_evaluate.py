"""Evaluation: batched full ranking equals a naive per-user loop, sampled ranking ignores padding, buckets, CLI."""

import csv
import json

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from pipeline.data.prepared import Candidates
from pipeline.ranking.evaluation.evaluate import activity_bucket, evaluate, full_ranking_mask, rank_full, rank_sampled
from pipeline.ranking.protocol import Scorer
from pipeline.ranking.checkpoint import save_checkpoint
from pipeline.config import RunSpec
from pipeline.ranking.training.train import train
from tests.ranking_fixtures import write_train_params


pytestmark = pytest.mark.usefixtures("torch_single_thread")


class ItemIndexScorer(Scorer):
    """score = item index: item 9 beats item 8, ... (ties only where items repeat)."""

    def __init__(self, n_items):
        super().__init__()
        self.n_items = n_items
        self.register_buffer("dummy", torch.zeros(1))

    def score(self, users, items):
        return items.float()

    def score_all(self, users):
        return torch.arange(self.n_items).float().expand(len(users), -1)


def test_sampled_ranks_by_hand_and_padding_ignored():
    cand = Candidates(
        users=np.array([0, 1, 2]),
        items=np.array([5, 0, 3]),
        negatives=np.array([[1, 7, 9], [-1, -1, -1], [3, 4, -1]]),
    )
    ranks = rank_sampled(ItemIndexScorer(10), cand).ranks
    # row 0: 7, 9 beat 5 -> 2; row 1: only padding -> 0 (item 0 would tie if padding counted); row 2: 3 ties, 4 beats
    assert ranks.tolist() == [2, 0, 2]


def test_full_ranking_equals_a_naive_per_user_loop(ranking_env, trained_runs):
    data = ranking_env.data
    model = trained_runs["bert_rs_neural"][1].model.eval()
    for split in ("valid", "test"):
        mask = full_ranking_mask(data, split)
        batched = rank_full(model, getattr(data, split), mask, batch_users=37).ranks
        known = {}  # validation competes against the test items; test ranking knows the validation positives
        for part in (data.train, data.valid) + ((data.test,) if split == "test" else ()):
            for u, i in zip(part.users, part.items):
                known.setdefault(int(u), set()).add(int(i))
        naive = []
        with torch.no_grad():
            for u, i in zip(getattr(data, split).users, getattr(data, split).items):
                scores = model.score(torch.full((data.n_items,), int(u)), torch.arange(data.n_items)).numpy()
                competitors = [j for j in range(data.n_items) if j not in known[int(u)]]
                naive.append(int((scores[competitors] >= scores[i]).sum()))
        np.testing.assert_array_equal(batched, naive)


def test_full_ranking_masks_train_and_same_split_positives_only_when_asked(ranking_env):
    data = ranking_env.data
    valid = full_ranking_mask(data, "valid")
    assert (valid.contains(data.train.users, data.train.items).all()
            and valid.contains(data.valid.users, data.valid.items).all())
    assert not valid.contains(data.test.users, data.test.items).any()
    m = full_ranking_mask(data, "test", mask_other_splits=False)
    assert m.contains(data.train.users, data.train.items).all() and m.contains(data.test.users, data.test.items).all()
    assert not m.contains(data.valid.users, data.valid.items).any()
    assert full_ranking_mask(data, "test").contains(data.valid.users, data.valid.items).all()


def test_activity_buckets_and_result_layout(ranking_env):
    assert activity_bucket(np.array([0, 1, 3, 4, 10, 11])).tolist() == ["0", "1-3", "1-3", "4-10", "4-10", ">10"]
    data = ranking_env.data
    out = evaluate(ItemIndexScorer(data.n_items), data, "test", ks=[1, 10])
    assert set(out) == {"sampled", "full", "buckets"}
    assert out["sampled"]["n"] == len(data.test) == out["full"]["n"]
    # each test user is counted in the bucket of their number of training interactions
    per_user = {u: int((data.train.users == u).sum()) for u in np.unique(data.test.users)}
    expected: dict[str, int] = {}
    for user in data.test.users:
        label = activity_bucket(np.array([per_user[user]]))[0]
        expected[label] = expected.get(label, 0) + 1
    for protocol in ("sampled", "full"):
        assert {name: bucket["n"] for name, bucket in out["buckets"][protocol].items()} == expected
    assert len(expected) > 1  # the planted world spreads its users over several buckets


def test_evaluate_cli_writes_metrics_table_and_plots(ranking_env, trained_runs, tmp_path):
    from stages.evaluate import main

    data, profiles = ranking_env.data, ranking_env.profiles()
    for run, name in (("bert_rs", "bert_rs_neural"), ("neumf", "neumf")):  # folder = the run's name in params
        spec, result = trained_runs[name]
        save_checkpoint(tmp_path / "models" / run, result, spec, ranking_env.config, data, profiles,
                        ranking_env.cache, run)
    app = typer.Typer()
    app.command()(main)
    out = tmp_path / "out"
    args = [
        "--prepared", str(ranking_env.prepared), "--models", str(tmp_path / "models"),
        "--metrics", str(out / "metrics.json"), "--table", str(out / "comparison.md"),
        "--plots-dir", str(out / "at_k"), "--params", str(write_train_params(tmp_path / "params.yaml")),
    ]
    listed_only = CliRunner().invoke(app, args)
    assert listed_only.exit_code == 2 and "no trained run for ['pop']" in listed_only.output  # params lists pop
    res = CliRunner().invoke(app, [*args, "--every-folder"])
    assert res.exit_code == 0, res.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"bert_rs", "neumf"}
    assert metrics["bert_rs"]["cache"] == str(ranking_env.cache) and metrics["neumf"]["cache"] is None
    for run, name in (("bert_rs", "bert_rs_neural"), ("neumf", "neumf")):  # the trained models' own test metrics
        expected = evaluate(trained_runs[name][1].model, data, "test", ks=[1, 10])
        for protocol in ("sampled", "full"):
            for metric in ("hr@1", "ndcg@10"):
                assert metrics[run][protocol][metric] == pytest.approx(expected[protocol][metric]), (run, protocol)
    table = (out / "comparison.md").read_text()
    assert "| HR@10 | NDCG@10 | HR@5 | NDCG@5 | HR@3 | NDCG@3 | HR@1 | NDCG@1 | Cache |" in table
    assert "sampled protocol" in table and "full protocol" in table and "user activity" in table
    assert sorted(p.name for p in (out / "at_k").iterdir()) == ["bert_rs.csv", "neumf.csv"]
    rows = list(csv.DictReader(open(out / "at_k" / "bert_rs.csv")))
    assert [int(r["k"]) for r in rows] == [1, 3, 5, 10]
    assert set(rows[0]) == {"k", "hr_sampled", "ndcg_sampled", "hr_full", "ndcg_full"}


def test_the_evaluate_stage_refuses_validation_for_a_run_fitted_on_it_and_masks_its_pairs_at_test(ranking_env,
                                                                                                 tmp_path):
    from stages.evaluate import main

    data = ranking_env.data
    config = ranking_env.config.override(refit_with_validation=True)
    result = train(RunSpec(model="pop"), config, data, progress=False)  # counts the validation pairs
    save_checkpoint(tmp_path / "models" / "pop", result, RunSpec(model="pop"), config, data)
    params = write_train_params(tmp_path / "params.yaml")
    params.write_text(params.read_text() + "evaluate:\n  mask_other_splits: false\n")
    app = typer.Typer()
    app.command()(main)
    out = tmp_path / "out"
    args = ["--prepared", str(ranking_env.prepared), "--models", str(tmp_path / "models"), "--every-folder",
            "--metrics", str(out / "metrics.json"), "--table", str(out / "comparison.md"),
            "--plots-dir", str(out / "at_k"), "--params", str(params)]
    refused = CliRunner().invoke(app, [*args, "--split", "valid"])
    assert refused.exit_code == 2, refused.output
    assert "pop/run.json" in refused.output and "train.refit_with_validation" in refused.output
    assert not out.exists()  # nothing written
    done = CliRunner().invoke(app, [*args, "--split", "test"])
    assert done.exit_code == 0, done.output
    full = json.loads((out / "metrics.json").read_text())["pop"]["full"]
    masked = evaluate(result.model, data, "test", ks=[1, 10], mask_other_splits=True)["full"]
    unmasked = evaluate(result.model, data, "test", ks=[1, 10], mask_other_splits=False)["full"]
    assert masked["ndcg@10"] != unmasked["ndcg@10"]  # the validation items compete when left unmasked
    assert full["ndcg@10"] == pytest.approx(masked["ndcg@10"])
