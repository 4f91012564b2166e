"""The benchmarks' resume point: a rerun skips finished work, and an interruption costs at most the unit it tore."""

import json

import pytest

from benchmarks.common import Ledger


def counting(value):
    calls = []

    def work():
        calls.append(1)
        return value

    return work, calls


def test_a_rerun_returns_the_recorded_result_without_redoing_the_work(tmp_path):
    path = tmp_path / "runs.jsonl"
    first, _ = counting({"ndcg@10": 0.25})
    Ledger(path).get_or_run("dm|ease", first)
    again, calls = counting({"ndcg@10": 0.99})
    assert Ledger(path).get_or_run("dm|ease", again) == {"ndcg@10": 0.25}
    assert calls == []


def test_a_line_torn_by_a_kill_is_dropped_and_that_unit_is_redone(tmp_path):
    path = tmp_path / "runs.jsonl"
    Ledger(path).get_or_run("dm|pop", lambda: {"ndcg@10": 0.1})
    with open(path, "a") as handle:
        handle.write('{"key": "dm|ease", "value": {"ndcg')  # the process died here
    ledger = Ledger(path)
    assert set(ledger.rows) == {"dm|pop"}
    redo, calls = counting({"ndcg@10": 0.2})
    assert ledger.get_or_run("dm|ease", redo) == {"ndcg@10": 0.2} and calls == [1]
    Ledger(path).get_or_run("dm|neumf", lambda: {"ndcg@10": 0.3})  # the resumed file reads and appends cleanly
    assert Ledger(path).rows == {"dm|pop": {"ndcg@10": 0.1}, "dm|ease": {"ndcg@10": 0.2}, "dm|neumf": {"ndcg@10": 0.3}}


def test_a_corrupt_line_before_the_end_names_the_file_and_line(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text('not json\n{"key": "a", "value": {}}\n')
    with pytest.raises(ValueError, match=r"runs\.jsonl:1"):
        Ledger(path)


def test_rows_written_in_the_older_flat_spelling_still_resume(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text(json.dumps({"key": "bert_rs|c0|s0", "valid": 0.3, "seconds": 12.0}) + "\n")
    work, calls = counting({})
    assert Ledger(path).get_or_run("bert_rs|c0|s0", work) == {"valid": 0.3, "seconds": 12.0}
    assert calls == []


def test_a_unit_measured_again_replaces_its_row_for_every_later_reader(tmp_path):
    ledger = Ledger(tmp_path / "runs.jsonl")
    ledger.get_or_run("train_text@bert_rs", lambda: {"seconds": 4881.0})
    ledger.put("train_text@bert_rs", {"seconds": 2400.0})
    assert ledger.rows["train_text@bert_rs"] == {"seconds": 2400.0}
    assert Ledger(tmp_path / "runs.jsonl").get_or_run("train_text@bert_rs", lambda: {"seconds": -1.0}) == {
        "seconds": 2400.0}
