"""How the benchmarks measure a piece of work: wall seconds, CPU seconds and the peak RSS of a process tree.

    with PeakRSS() as rss: work()            # in this process: rss.peak_mb (absolute), rss.growth_mb (over start)
    run = run_measured(command, cwd=..., log=...)   # a command: run.seconds, run.cpu_seconds, run.peak_mb

Both sample the RSS of the process and every descendant (a bertrs under dvc, Ray's workers, DataLoader workers)
every `interval` seconds, so a peak shorter than the interval can be missed; CPU seconds are those of finished
child processes (`RUSAGE_CHILDREN`), which hardly move when other jobs share the cores, where wall seconds do.
"""

from __future__ import annotations

import resource
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

MIB = 2**20


def tree_rss(process: psutil.Process) -> int:
    """Bytes resident in `process` and its descendants now; a process that exits while being read counts 0."""
    total = 0
    try:
        members = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


class PeakRSS:
    """Samples this process tree's RSS in a thread while the block runs: `peak_mb` is the highest total seen,
    `growth_mb` its rise over the level at entry (what the work itself added)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval

    def __enter__(self) -> "PeakRSS":
        self.process, self.stopped = psutil.Process(), threading.Event()
        self.start = self.peak = tree_rss(self.process)
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.stopped.wait(self.interval):
            self.peak = max(self.peak, tree_rss(self.process))

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join()
        self.peak = max(self.peak, tree_rss(self.process))
        self.peak_mb = self.peak / MIB
        self.growth_mb = (self.peak - self.start) / MIB


@dataclass(frozen=True)
class Measured:
    seconds: float  # wall
    cpu_seconds: float  # user + system of the command's whole process tree
    peak_bytes: int  # the tree's highest sampled RSS

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / MIB

    @property
    def peak_gb(self) -> float:
        return self.peak_bytes / 2**30


def children_cpu_seconds() -> float:
    """User + system CPU of every finished child process tree of this process."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def stop_tree(process: psutil.Process, grace: float = 5.0) -> None:
    """End `process` and every descendant (terminate, then kill what is left after `grace` seconds)."""
    try:
        members = [*process.children(recursive=True), process]
    except psutil.Error:
        return
    for member in members:
        try:
            member.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(members, timeout=grace)
    for member in alive:
        try:
            member.kill()
        except psutil.Error:
            pass


def run_measured(command: list[str], *, cwd: Path | None = None, env: dict | None = None, log: Path | None = None,
                 interval: float = 0.1) -> Measured:
    """Run `command` to the end, sampling its tree's RSS. Its output goes to `log` (appended) or is kept for the
    error: a non-zero exit raises RuntimeError naming the command and ending with its last output. Interrupted
    (Ctrl-C, or SIGTERM where the caller turns it into an exception), it stops the command's whole tree first: a
    `dvc repro` left behind keeps training and shares the cores with whatever is measured next."""
    started, cpu_before = time.perf_counter(), children_cpu_seconds()
    out = open(log, "a") if log else subprocess.PIPE
    try:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        handle, peak = psutil.Process(process.pid), 0
        captured: list[str] = []
        reader = None
        if log is None:  # drain the pipe in a thread so a chatty command never blocks on a full pipe
            reader = threading.Thread(target=lambda: captured.extend(process.stdout), daemon=True)
            reader.start()
        try:
            while process.poll() is None:
                peak = max(peak, tree_rss(handle))
                time.sleep(interval)
        except BaseException:
            stop_tree(handle)
            raise
        if reader is not None:
            reader.join()
    finally:
        if log:
            out.close()
    if process.returncode:
        tail = "".join(captured)[-2000:] if log is None else f"(its output is in {log})"
        raise RuntimeError(f"{' '.join(map(str, command))} failed with exit {process.returncode}: {tail}")
    return Measured(time.perf_counter() - started, children_cpu_seconds() - cpu_before, peak)
