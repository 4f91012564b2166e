"""A neural ranker's training loop resumed after an interruption (Ctrl-C, a lost machine, kill -9).

After every epoch the whole state of the loop goes to one file, written atomically: the model's and the optimiser's
states, the negative sampler's generator, torch's generator of every process (dropout draws differ between the
processes of a torchrun launch), the curves so far, the early-stopping record and the best epoch's weights. A rerun
of the same command continues after the last epoch written, and ends with the weights, curves and choice of a run
never interrupted: what it would have drawn next it draws next.

A state is taken up only by the loop that wrote it: the file is named by a key over everything the loop's result
depends on (the run, its model's settings, the shared train section, the pairs it fits, the profiles it reads and its
epoch budget), so a changed setting, a different split or the final fit's longer history each start afresh. The
folder is the checkpoint folder's sibling (`pipeline.io.default_work_dir`, as fine-tuning's), removed once the
checkpoint is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pipeline.config import RunSpec
from pipeline.embeddings.cache import Profiles
from pipeline.io import atomic_path
from pipeline.launch import is_main_process
from pipeline.ranking.training import distributed
from pipeline.ranking.training.sampling import NegativeSampler
from pipeline.ranking.selection.select import EarlyStop

log = logging.getLogger(__name__)


def loop_key(spec: RunSpec, settings: Any, shared: Any, users: np.ndarray, items: np.ndarray,
             profiles: Profiles | None, epochs: int, fixed: bool) -> str:
    """A digest of everything a training loop's result depends on (see the module docstring); `fixed`: the epoch
    count is given (the final fit, an ablation), not chosen on validation."""
    digest = hashlib.sha256()
    described = {"spec": dataclasses.asdict(spec), "settings": dataclasses.asdict(settings),
                 "shared": dataclasses.asdict(shared), "epochs": epochs, "fixed": fixed}
    digest.update(json.dumps(described, sort_keys=True, default=str).encode())
    arrays = [users, items] + ([profiles.users, profiles.items] if profiles is not None else [])
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:20]


@dataclass
class LoopState:
    """Everything the loop carries from one epoch to the next."""

    epoch: int  # the last epoch finished
    finished: bool  # stopped early or ran its epochs: the loop has nothing left to do
    curves: list[dict]
    best: EarlyStop
    best_state: dict | None
    best_valid: dict


class EpochStates:
    """Write the loop's state after each epoch, and read it back at the start of a rerun."""

    def __init__(self, folder: Path | None, key: str) -> None:
        self.path = folder / f"epochs-{key}.pt" if folder is not None else None

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, sampler: NegativeSampler,
                best: EarlyStop) -> LoopState | None:
        """Load the state a previous run of this loop left, into `model`, `optimizer`, `sampler` and torch's
        generator; None (nothing changed) where there is none."""
        if self.path is None or not self.path.is_file():
            return None
        saved = torch.load(self.path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        sampler.rng.bit_generator.state = saved["sampler_rng"]
        torch.set_rng_state(saved["torch_rng"][distributed.rank()])
        best.__dict__.update(saved["best"])
        log.info("resuming %s after epoch %d", self.path, saved["epoch"])
        return LoopState(saved["epoch"], saved["finished"], saved["curves"], best, saved["best_state"],
                         saved["best_valid"])

    def save(self, state: LoopState, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             sampler: NegativeSampler) -> None:
        """Every process hands in its torch generator; the first writes the file."""
        if self.path is None:
            return
        generators = [torch.get_rng_state()]
        if distributed.active():
            generators = [None] * distributed.processes()
            dist.all_gather_object(generators, torch.get_rng_state())
        if not is_main_process():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            torch.save({"epoch": state.epoch, "finished": state.finished, "curves": state.curves,
                        "best": dict(vars(state.best)), "best_state": state.best_state,
                        "best_valid": state.best_valid, "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "sampler_rng": sampler.rng.bit_generator.state,
                        "torch_rng": generators}, tmp)
