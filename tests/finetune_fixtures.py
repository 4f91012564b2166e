"""Fine-tuning fixtures: a process entry that can stop after a checkpoint (so a test can SIGKILL it there), and
helpers to launch it plainly or under torchrun and to compare output folders byte for byte.

    python -m tests.finetune_fixtures --objective mlm_nsp --prepared P --base B --out O --config '{...}' \
        [--pause-after-step 2 --flag F]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")


def pause_after_saving(step: int, flag: Path):
    """A `TrainerCallback` that, once checkpoint `step` is on disk (with every process's RNG state), touches `flag`
    and sleeps until killed."""
    from transformers import TrainerCallback

    class Pause(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step >= step:
                if state.is_world_process_zero:
                    checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                    while len(list(checkpoint.glob("rng_state*.pth"))) < args.world_size:
                        time.sleep(0.1)
                    flag.touch()
                time.sleep(3600)

    return Pause()


def environment() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def entry_command(objective: str, prepared: Path, base: Path, out: Path, config: dict, processes: int = 1,
                  pause_after_step: int | None = None, flag: Path | None = None, port: int = 29511) -> list[str]:
    args = ["-m", "tests.finetune_fixtures", "--objective", objective, "--prepared", str(prepared), "--base", str(base),
            "--out", str(out), "--config", json.dumps(config)]
    if pause_after_step is not None:
        args += ["--pause-after-step", str(pause_after_step), "--flag", str(flag)]
    if processes == 1:
        return [sys.executable, *args]
    return [str(TORCHRUN), "--nproc_per_node", str(processes), "--master_port", str(port), *args]


def run_to_completion(command: list[str], timeout: float = 300) -> None:
    done = subprocess.run(command, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def kill_after_checkpoint(command: list[str], flag: Path, timeout: float = 300) -> None:
    """Start `command` in its own process group, wait until it has saved a checkpoint, then SIGKILL the group and
    every process under it (torchrun starts its workers in sessions of their own, out of the group's reach)."""
    proc = subprocess.Popen(command, cwd=ROOT, env=environment(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not flag.exists():
            if proc.poll() is not None:
                raise AssertionError(f"run ended before its checkpoint: {proc.stderr.read().decode()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("no checkpoint within the timeout")
            time.sleep(0.2)
    finally:
        workers = psutil.Process(proc.pid).children(recursive=True)
        os.killpg(proc.pid, signal.SIGKILL)
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` by relative path, for byte-for-byte comparison."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objective", choices=["mlm_nsp", "contrastive"], required=True)
    parser.add_argument("--prepared", required=True)
    parser.add_argument("--base", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--pause-after-step", type=int)
    parser.add_argument("--flag")
    args = parser.parse_args()

    from pipeline.config import FinetuneConfig
    from pipeline.data.prepared import load_reviews
    from pipeline.io import write_json
    from pipeline.text.contrastive import contrastive_finetune
    from pipeline.launch import is_main_process
    from pipeline.text.finetune import finetune_encoder

    config = FinetuneConfig(**json.loads(args.config))
    callbacks = [pause_after_saving(args.pause_after_step, Path(args.flag))] if args.pause_after_step else None
    train = contrastive_finetune if args.objective == "contrastive" else finetune_encoder
    metrics = train(load_reviews(args.prepared), args.base, args.out, config, callbacks=callbacks)
    if is_main_process():
        write_json(Path(f"{args.out}.metrics.json"), metrics)


if __name__ == "__main__":
    main()
