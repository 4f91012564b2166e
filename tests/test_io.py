"""Outputs appear whole or not at all, and what a killed writer left beside an output goes with the next write."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipeline.io import DataError, atomic_dir


def test_a_folder_written_in_a_failing_block_leaves_the_old_output_and_no_trace(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("stopped")
    assert (out / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_folder_never_replaces_a_file_of_the_same_name(tmp_path):
    out = tmp_path / "out"
    out.write_text("a file where the folder goes")
    with pytest.raises(DataError, match="existing file, not a folder"), atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("new")
    assert out.read_text() == "a file where the folder goes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_what_a_killed_writer_left_goes_and_a_running_writers_work_stays(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])  # a writer that ran and is gone
    dead.wait()
    left = tmp_path / f".out.tmp-{dead.pid}"
    (left / "shard").mkdir(parents=True)
    old = tmp_path / f".out.old-{dead.pid}"
    old.write_text("the output before, as a killed replace left it")
    running = tmp_path / f".out.tmp-{os.getppid()}"  # a live process's work in progress
    running.mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", running.name])
