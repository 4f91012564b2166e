"""Training a neural ranker on several processes: the same `bertrs train`, launched by torchrun.

    torchrun --standalone --nproc_per_node 2 -- $(which bertrs) train --run bert_rs_neural ...   # CPUs (gloo)
    torchrun --standalone --nproc_per_node 8 -- $(which bertrs) train --run bert_rs_neural ...   # GPUs (nccl)

(`--` stops torchrun from reading `--run` as an abbreviation of its own `--run-path`.)

Every process builds the same model from the same seed and draws the same epoch (the sampler's seeded permutation
and negatives); each then trains on its own contiguous part of every global batch (`models.<name>.batch_size` is
the global batch, as in fine-tuning), and DistributedDataParallel averages the gradients. Each process's loss is
weighted by its share of the batch, so the averaged gradient is the gradient of the whole batch's mean loss, and N
processes take the same Adam steps as one process, up to floating-point summation order (and dropout masks,
which each process draws from its own stream). Validation ranks a slice of the held-out users in each process and
gathers the ranks in their original order, so every process holds the same global metrics, and the same epoch
choice and early stop follow. Only the first process writes the checkpoint and curves.

Closed-form models (pop, ease, bert_rs) are fitted by the first process alone; the others leave at once.
"""

from __future__ import annotations

import inspect
import os
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.config import ConfigError, SGDConfig
from pipeline.data.prepared import Interactions
from pipeline.launch import launched_processes


def trains_by_sgd(section: object) -> bool:
    """A model whose `models.<name>` section is an SGDConfig is trained by the minibatch loop (and can share it
    across processes); the others are fitted in closed form."""
    return isinstance(section, SGDConfig)


def active() -> bool:
    """A process group of two or more processes is open (inside `process_group`)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def processes() -> int:
    """The number of processes training together: the group's size inside `process_group`, else 1."""
    return dist.get_world_size() if active() else 1


def rank() -> int:
    """This process's rank in the group inside `process_group` (0 is the first, the one that writes), else 0."""
    return dist.get_rank() if active() else 0


@contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Join torchrun's process group for the duration (gloo on CPU, nccl on CUDA, one GPU per process); a plain
    run, or a caller that already opened the group, passes straight through."""
    if launched_processes() == 1 or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ConfigError(f"torchrun --nproc_per_node: process {local} has no GPU "
                              f"(this machine has {torch.cuda.device_count()}); use at most one process per GPU")
        torch.cuda.set_device(local)  # `cuda` now means this process's own GPU
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def batch_share(n: int, rank: int, processes: int) -> slice:
    """This process's contiguous part of a global batch of n examples, the parts as even as n allows."""
    bounds = np.linspace(0, n, processes + 1).round().astype(int)
    return slice(int(bounds[rank]), int(bounds[rank + 1]))


class BatchShareLoss(nn.Module):
    """forward(global batch) -> this process's share of the batch's mean loss, times the number of processes.

    DistributedDataParallel averages gradients over processes; a process that holds n_r of the batch's n examples
    backpropagates loss_r * n_r * N / n, so the average is the gradient of the mean loss over all n examples, even
    when the parts are uneven. A process whose part is empty still runs forward and backward (DDP's all-reduce
    needs every process) on one example weighted by zero. In a single process this is `model.loss` unchanged."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """This process's weighted share of the mean loss of the global batch users, pos (b,), neg (b, k): a
        scalar."""
        n, world = len(users), processes()
        if world == 1:
            return self.model.loss(users, pos, neg)
        part = batch_share(n, rank(), world)
        held = part.stop - part.start
        if held == 0:
            part = slice(0, 1)
        return self.model.loss(users[part], pos[part], neg[part]) * (held * world / n)


def training_module(model: nn.Module) -> nn.Module:
    """What the SGD loop calls for a batch's loss: `BatchShareLoss`, wrapped in DDP when several processes train.

    Buffers (the fixed review profiles) are not re-broadcast every step: they never change. Processes other than
    the first reseed torch so their dropout masks differ from the first one's."""
    if launched_processes() > 1 and not active():
        raise ConfigError(f"this process is one of {launched_processes()} launched by torchrun but has not joined "
                          "their process group: train inside pipeline.ranking.training.distributed.process_group "
                          "(bertrs train does)")
    module = BatchShareLoss(model)
    if not active():
        return module
    if rank() > 0:
        torch.manual_seed(torch.initial_seed() + rank())
    device = next(model.parameters()).device
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   **_no_buffer_sync_each_step())


def _no_buffer_sync_each_step() -> dict:
    # torch 2.13 renamed the switch; both versions still sync buffers once, when DDP is built
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def mean_over_processes(value: float) -> float:
    """The mean of a per-process number (a plain run: the number)."""
    if not active():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor)
    return float(tensor.item()) / processes()


def this_process_part(heldout: Interactions) -> Interactions:
    """The contiguous slice of a split's held-out pairs this process ranks (all of them in a plain run)."""
    part = batch_share(len(heldout), rank(), processes())
    return Interactions(heldout.users[part], heldout.items[part])


def gather_in_order(values: np.ndarray) -> np.ndarray:
    """Every process's `this_process_part` result, concatenated in process order: the whole split's, in order."""
    if not active():
        return values
    parts: list = [None] * processes()
    dist.all_gather_object(parts, values)
    return np.concatenate(parts)


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
