"""Which process of a multi-process launch this is, read from the launcher's environment (torchrun and
`accelerate launch` both set WORLD_SIZE and RANK): fine-tuning (pipeline/text) and neural training
(pipeline/ranking/training/distributed.py) ask the same two questions, and only the main process writes outputs."""

from __future__ import annotations

import os


def launched_processes() -> int:
    """Processes the launcher started for this run (WORLD_SIZE; 1 when run plainly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True in the one process that writes outputs (rank 0 of a launch, or a plain run)."""
    return int(os.environ.get("RANK", "0")) == 0
