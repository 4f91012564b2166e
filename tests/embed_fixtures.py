"""Embedding-engine fixtures: a local 2-CPU Ray cluster and an `embed` run in another process that can be killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs build_cache in a child process that parks forever once shard PARK is on disk, so a test can SIGKILL it there.
PARKING_EMBED = """
import sys, time
from pathlib import Path
from pipeline.config import EmbedConfig, RayEngineConfig
from pipeline.embeddings.build import build_cache
prepared, encoder, out, marker, park, engine, address = sys.argv[1:8]
def park_after(k):
    if k == int(park):
        Path(marker).write_text(str(k))
        time.sleep(3600)
config = EmbedConfig(max_length=32, batch_size=4, shard_size=4, threads=1, backend="torch", engine=engine,
                     ray=RayEngineConfig(address=address or None, num_actors=2))
build_cache(prepared, encoder, "tiny", config, out, on_shard=park_after, progress=False)
"""


def embed_then_kill(prepared: Path, encoder: Path, out: Path, *, park: int, engine: str = "local",
                    address: str = "", timeout: float = 120.0) -> None:
    """Start an embed in a new process, wait until shard `park` is written, then kill it with SIGKILL."""
    marker = out.with_name(out.name + ".parked")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen([sys.executable, "-c", PARKING_EMBED, str(prepared), str(encoder), str(out),
                              str(marker), str(park), engine, address], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if child.poll() is not None:
            raise AssertionError(f"embed child exited early: {child.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            child.kill()
            raise AssertionError("embed child never reached the shard to park at")
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait()


@pytest.fixture(scope="session")
def local_ray():
    """A local Ray with 2 CPUs for the whole session; yields its address (for child processes to join)."""
    ray = pytest.importorskip("ray", reason="the ray engine needs the `.[ray]` extra")
    pythonpath = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath, "HF_HUB_OFFLINE": "1"}})
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
