"""The SGD loop of the neural rankers: epochs of freshly drawn negatives, early stopping on validation, resumable
after every epoch, and distributed over torchrun processes.

The epoch kept is the first best by validation NDCG@10 (select.py's EarlyStop). Every epoch's state is written
to `resume_dir` (resume.py), so a rerun after an interruption, kill -9 included, continues from the last epoch
finished. Under torchrun every process draws the same seeded epoch and trains on its part of each batch
(distributed.py).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from pipeline.config import RankingConfig, RunSpec
from pipeline.data.prepared import PreparedData
from pipeline.embeddings.cache import Profiles
from pipeline.launch import is_main_process
from pipeline.ranking.protocol import Ranker
from pipeline.ranking.selection.select import SELECTION_METRIC, EarlyStop
from pipeline.ranking.training import distributed
from pipeline.ranking.training.resume import EpochStates, LoopState, loop_key
from pipeline.ranking.training.result import TrainResult, curve_metrics, valid_metrics
from pipeline.ranking.training.sampling import NegativeSampler, PairSet

log = logging.getLogger(__name__)


def fit_by_sgd(model: Ranker, spec: RunSpec, config: RankingConfig, data: PreparedData, mask: PairSet | None,
               device: torch.device, profiles: Profiles | None, fixed_epochs: int | None = None,
               resume_dir: Path | None = None, progress: bool = True, chosen_with: str = "") -> TrainResult:
    """Train `model` by minibatch Adam on `data.train`, keeping the validation-best epoch.

    Parameters
    ----------
    model : The untrained model (seeded by the caller).
    spec, config : The run and its settings (`models.<name>`: epochs, patience, batch size, learning rate, ...).
    data : The prepared data.
    mask : The validation ranking's mask, or None without validation (the last epoch is then kept).
    device : Where the loop runs.
    profiles : The profiles the model reads (part of the resume key).
    fixed_epochs : Train exactly this many epochs and keep the last (validation recorded, never used).
    resume_dir : Where the loop's state goes after every epoch; None: no resuming.
    progress : Show a progress bar (the first process only).
    chosen_with : TrainResult.chosen_with_profiles.

    Returns
    -------
    The TrainResult with the kept epoch's weights, on the CPU.
    """
    settings = config.section(spec.model)
    has_valid = mask is not None
    model.to(device)
    batch_loss = distributed.training_module(model)  # DDP over the processes' parts of each batch, under torchrun
    # the fused kernel updates each parameter in one pass (foreach Adam makes several over every row of the ID and
    # gate tables each step; 2-4x per step at the paper's shape, benchmarks/results/neural_epoch.md): the same update
    # up to float rounding, which compounded over epochs moves a run about as much as another seed would
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay,
                                 fused=True)
    sampler = NegativeSampler(data.train.users, data.train.items, data.n_users, data.n_items, config.train.seed)
    best = EarlyStop(settings.patience)
    epochs = settings.epochs if fixed_epochs is None else fixed_epochs
    key = loop_key(spec, settings, config.train, data.train.users, data.train.items, profiles, epochs,
                   fixed=fixed_epochs is not None)
    states = EpochStates(resume_dir, key)
    state = states.restore(model, optimizer, sampler, best) or LoopState(0, False, [], best, None, {})
    show = progress and is_main_process()
    bar = tqdm(range(state.epoch + 1, epochs + 1), initial=state.epoch, total=epochs, desc=f"train {spec.model}",
               disable=not show, unit="epoch")
    for epoch in bar if not state.finished else ():
        loss = train_epoch(model, batch_loss, optimizer, sampler, settings, device)
        valid = valid_metrics(model, data, mask) if has_valid else {}
        state.curves.append({"epoch": epoch, "loss": loss, **curve_metrics(valid)})
        bar.set_postfix(loss=f"{loss:.4f}", valid_ndcg10=f"{valid.get(SELECTION_METRIC, float('nan')):.4f}")
        # without validation, or with the epoch count fixed from outside: the latest epoch wins
        score = epoch if fixed_epochs is not None else valid.get(SELECTION_METRIC, epoch)
        improved = best.offer(epoch, score)
        if improved:
            state.best_valid, state.best_state = valid, copy.deepcopy(model.state_dict())
        stop = best.spent and not improved
        state.epoch, state.finished = epoch, stop or epoch == epochs
        states.save(state, model, optimizer, sampler)  # a rerun after an interruption continues from here
        if stop:
            log.info("early stop at epoch %d (best %d, valid %s %.4f)", epoch, best.setting, SELECTION_METRIC,
                     best.score)
            break
    model.load_state_dict(state.best_state)
    return TrainResult(model.cpu(), state.curves, best.setting, state.best_valid, distributed.processes(),
                       chosen_with_profiles=chosen_with)


def train_epoch(model: Ranker, batch_loss: torch.nn.Module, optimizer: torch.optim.Optimizer,
                sampler: NegativeSampler, settings, device: torch.device) -> float:
    """One pass over freshly drawn negatives.

    Parameters
    ----------
    model : The model, in training mode afterwards.
    batch_loss : Maps a global batch to this process's share of its loss (distributed.BatchShareLoss).
    optimizer, sampler : The loop's Adam and negative sampler.
    settings : The model's section (an SGDConfig: num_negatives, batch_size).
    device : Where the batches go.

    Returns
    -------
    The epoch's mean loss over every example (averaged over processes).
    """
    model.train()
    users, pos, neg = (torch.as_tensor(a, device=device) for a in sampler.epoch(settings.num_negatives))
    total, seen = 0.0, 0
    for start in range(0, len(users), settings.batch_size):
        batch = slice(start, start + settings.batch_size)
        loss = batch_loss(users[batch], pos[batch], neg[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = len(users[batch])
        total, seen = total + float(loss.detach()) * n, seen + n
    return distributed.mean_over_processes(total) / max(seen, 1)
