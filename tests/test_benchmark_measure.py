"""What the benchmarks' time and memory figures measure (benchmarks/common.py): a command's whole process tree,
CPU apart from wall time, and a failure that says what failed."""

import signal
import sys
import textwrap
import time

import psutil
import pytest

from benchmarks.common import PeakRSS, run_measured

MB = 2**20


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_the_peak_counts_memory_held_by_a_grandchild_of_the_command():
    """dvc runs bertrs as its child: the peak must include it, not only the process the benchmark started."""
    grandchild = "import time; held = b'x' * (300 * 2**20); time.sleep(1.0)"
    run = run_measured(python(f"import subprocess, sys; subprocess.run([sys.executable, '-c', {grandchild!r}])"),
                       interval=0.05)
    assert run.peak_mb > 300


def test_cpu_seconds_follow_the_work_done_and_wall_seconds_the_time_taken():
    busy = run_measured(python("import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass"))
    idle = run_measured(python("import time; time.sleep(0.6)"))
    assert busy.cpu_seconds >= 0.5
    assert idle.seconds >= 0.6 and idle.cpu_seconds < 0.3


def test_a_failing_command_names_itself_its_exit_status_and_its_last_output(tmp_path):
    with pytest.raises(RuntimeError, match=r"failed with exit 3: .*boom"):
        run_measured(python("import sys; print('boom'); sys.exit(3)"))
    log = tmp_path / "stage.log"
    with pytest.raises(RuntimeError, match="its output is in .*stage.log"):
        run_measured(python("import sys; print('boom in the log'); sys.exit(3)"), log=log)
    assert "boom in the log" in log.read_text()


def test_peak_rss_in_process_reports_the_work_s_growth_over_the_level_at_entry():
    with PeakRSS(interval=0.01) as rss:
        held = b"x" * (200 * MB)
        time.sleep(0.1)
        del held
    assert 190 < rss.growth_mb < 260


def test_an_interrupted_measurement_stops_the_command_and_its_descendants(tmp_path):
    """A stopped benchmark must not leave a stage training behind it, sharing the cores with the next measurement."""
    pid_file = tmp_path / "grandchild.pid"
    command = [sys.executable, "-c", textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(60)
    """)]

    def interrupt(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 2.0)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_measured(command)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    grandchild = int(pid_file.read_text())
    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
