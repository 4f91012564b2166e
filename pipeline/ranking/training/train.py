"""Training every ranker the same way, with early stopping on validation.

    result = train(spec, config, data, profiles)          # profiles only for text models

Model selection and early stopping look at the VALIDATION split's full-ranking NDCG@10 and nothing else (the metric
every model is chosen and compared on); the validation ranking masks training pairs and validation positives only,
so the test split is never touched here. Negatives are redrawn every epoch. Closed-form models (pop, ease, bert_rs)
"train" through the same entry point: one fit, the choice among their candidates (pipeline/ranking/selection/select.py), one
validation pass, one row of curves. The epoch is kept by the same first-best rule (select.py's KeepBest, as
EarlyStop, which the scalable solver's passes share).

The final fit (`train.refit_with_validation`, the default). Once everything is chosen on the fit to the training
pairs, the chosen form is fitted once more on training + validation pairs: a closed-form model refits its chosen
setting (`ClosedFormRanker.refit`: EASE's gram, popularity's counts, the history rows x_u it scores from), a neural
model retrains from the same seed for exactly its chosen number of epochs. Nothing is chosen again and the
validation numbers of the result are those of the training-only fit; the test split is still unread. Why: at test
time the validation interaction is part of what the user did before, and leave-one-out protocols score the held-out
item from everything before it (every model gets the same history, so the comparison stays fair). Reviews,
profiles and the text gram remain training-only (they come from the embedding cache). So under leave-one-out the
test history ends one interaction after the profile's newest review, while at validation the two end together; bert_rs
therefore chooses its text settings, and a neural text model its epochs, with user profiles one review behind (the
cache's `lagged` view: each user's newest training review left out) and is tested with the whole training profiles
(registry.profiles_lag_history).
Under torchrun the SGD loop runs in every process on its part of each batch, inside `distributed.process_group`
(pipeline/ranking/training/distributed.py).
The checkpoint written from the result is pipeline/ranking/checkpoint.py's contract.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.config import ConfigError, RankingConfig, RunSpec
from pipeline.data.prepared import Interactions, PreparedData
from pipeline.embeddings.cache import Profiles
from pipeline.io import atomic_path
from pipeline.launch import is_main_process
from pipeline.ranking.training import distributed
from pipeline.ranking.evaluation.ablation import model_profiles
from pipeline.ranking.evaluation.evaluate import full_ranking_mask, rank_full
from pipeline.ranking.training.memory import Shape, check_fit
from pipeline.ranking.evaluation.metrics import metrics_from_ranks
from pipeline.ranking.protocol import ClosedFormRanker, Ranker
from pipeline.ranking.registry import build_model, fit_memory
from pipeline.ranking.training.resume import EpochStates, LoopState, loop_key
from pipeline.ranking.training.sampling import NegativeSampler, PairSet
from pipeline.ranking.selection.choice import Choice
from pipeline.ranking.shared.gram import read_shared_eigen
from pipeline.ranking.selection.select import SELECTION_METRIC, EarlyStop, select

log = logging.getLogger(__name__)

# TrainResult.chosen_with_profiles: the user profiles a text model's settings were chosen with
WHOLE_PROFILES = "training reviews"
LAGGED_PROFILES = "newest training review left out"  # registry.profiles_lag_history


@dataclass
class TrainResult:
    model: Ranker
    # one row per epoch: epoch, loss, valid_hr@10, valid_ndcg@10 (full ranking); the scalable solver's rows are its
    # passes, scored as the item model alone (its text weight is chosen afterwards: best_valid includes it)
    curves: list[dict]
    best_epoch: int
    best_valid: dict  # validation metrics of the selected epoch
    processes: int = 1  # processes that trained it together (torchrun)
    selection: Choice | None = None  # a closed-form model's choice among its candidates (select.py)
    fitted_on: str = "train"  # the pairs `model` was last fitted on: "train", or "train+valid" after the final fit
    chosen_with_profiles: str = WHOLE_PROFILES  # or LAGGED_PROFILES, where test lags the profiles


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is available")
    return torch.device(name)


def check_run_memory(spec: RunSpec, config: RankingConfig, data: PreparedData, profiles: Profiles | None) -> float:
    """Stop before fitting when the run's estimated peak memory (the registry's estimate for its model and settings)
    exceeds train.memory_budget_gb (see memory.py)."""
    shape = Shape(data.n_users, data.n_items, len(data.train.users), profiles.dim if profiles is not None else 0)
    need, advice = fit_memory(spec.model, shape, config)
    return check_fit(need, f"model {spec.model}", shape, config.train.memory_budget_gb, advice)


def valid_metrics(model: Ranker, data: PreparedData, mask: PairSet | None = None) -> dict:
    """Full-ranking HR@10 / NDCG@10 on the validation split: the only signal model selection sees. `mask` is
    `full_ranking_mask(data, "valid")`, built once per run by the caller (it never includes test pairs). Under
    torchrun each process ranks its part of the users and every process gets the metrics of all of them."""
    mask = full_ranking_mask(data, "valid") if mask is None else mask
    ranks = rank_full(model, distributed.this_process_part(data.valid), mask).ranks
    return metrics_from_ranks(distributed.gather_in_order(ranks), [10])


def train(
    spec: RunSpec,
    config: RankingConfig,
    data: PreparedData,
    profiles: Profiles | None = None,
    progress: bool = True,
    fixed_epochs: int | None = None,
    resume_dir: Path | None = None,
    shared_gram: Path | None = None,
) -> TrainResult:
    """Fit one run's model on `data.train`, selecting the epoch by validation full-ranking NDCG@10 with early
    stopping, then (`train.refit_with_validation`) fit what was chosen on training + validation pairs.
    `fixed_epochs` trains exactly that many epochs and keeps the last one (validation is still recorded, never
    used): an ablation that must hold its partner's epoch count instead of choosing its own. `resume_dir`: where a
    neural model's loop writes its state after every epoch and a rerun takes it up (pipeline/ranking/training/resume.py).
    `shared_gram`: a `data/gram` folder (pipeline/ranking/shared/gram.py) whose decomposition of the training Gram a
    closed-form search starts from instead of taking its own."""
    refit = config.train.refit_with_validation and len(data.valid) > 0
    if not refit and profiles is not None and profiles.lagged is not None:
        profiles = dataclasses.replace(profiles, lagged=None)  # tested as chosen: nothing lags
    result = fit_on_training(spec, config, data, profiles, progress, fixed_epochs, resume_dir, shared_gram)
    if refit:
        result = refit_with_validation(result, spec, config, data, profiles, progress, resume_dir)
    return result


def with_validation_in_training(data: PreparedData) -> PreparedData:
    """`data` whose training pairs include the validation pairs and whose validation split is empty: what the final
    fit learns from (the test split and the candidates are untouched, and never read by a fit)."""
    train_pairs = Interactions(np.concatenate([data.train.users, data.valid.users]),
                               np.concatenate([data.train.items, data.valid.items]))
    empty = Interactions(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    return dataclasses.replace(data, train=train_pairs, valid=empty)


def refit_with_validation(
    result: TrainResult,
    spec: RunSpec,
    config: RankingConfig,
    data: PreparedData,
    profiles: Profiles | None = None,
    progress: bool = True,
    resume_dir: Path | None = None,
) -> TrainResult:
    """The final fit (see the module docstring): `result`'s chosen form fitted on training + validation pairs,
    with `result`'s validation record, curves and choice kept as they were measured. A closed-form model is refitted
    in place (`result.model` is the refitted one afterwards); a neural model is trained anew."""
    history = with_validation_in_training(data)
    if isinstance(result.model, ClosedFormRanker):
        if result.model.fits_on_device:
            result.model.to(resolve_device(config.train.device))  # the final solve where the search ran
        if profiles is not None and profiles.lagged is not None:
            result.model.use_profiles(model_profiles(spec, profiles, config.train.seed))  # chosen lagged, tested whole
        model = result.model.refit(history.train.users, history.train.items, result.selection).cpu()
    else:
        model = fit_on_training(spec, config, history, profiles, progress, result.best_epoch, resume_dir).model
    return dataclasses.replace(result, model=model, fitted_on="train+valid")


def fit_on_training(
    spec: RunSpec,
    config: RankingConfig,
    data: PreparedData,
    profiles: Profiles | None = None,
    progress: bool = True,
    fixed_epochs: int | None = None,
    resume_dir: Path | None = None,
    shared_gram: Path | None = None,
) -> TrainResult:
    """`train` without the final fit: the model as chosen on validation, fitted on `data.train` alone. Given
    profiles with a lagged view, a closed-form model is returned reading the lagged user profiles (as it chose):
    `refit_with_validation` puts the whole ones back; a neural text model choosing its epochs (`fixed_epochs`
    None) trains with the lagged ones, and the final fit retrains with the whole ones. Score test only after it."""
    torch.manual_seed(config.train.seed)
    device = resolve_device(config.train.device)
    check_run_memory(spec, config, data, profiles)
    seen = model_profiles(spec, profiles, config.train.seed)
    model = build_model(spec, config, data.n_users, data.n_items, seen)
    chosen_with = WHOLE_PROFILES
    if isinstance(model, ClosedFormRanker) and seen is not None and seen.lagged is not None:
        model.use_profiles(seen.lagged)  # test will lag the profiles by one review: choose as it will be
        chosen_with = LAGGED_PROFILES
    elif model.trainable and seen is not None and seen.lagged is not None and fixed_epochs is None:
        # a neural text model chooses its epochs as test will read the profiles too; the final fit retrains its
        # epoch count from the same seed with the whole ones
        torch.manual_seed(config.train.seed)
        seen = seen.lagged
        model = build_model(spec, config, data.n_users, data.n_items, seen)
        chosen_with = LAGGED_PROFILES
    settings = config.section(spec.model)
    has_valid = len(data.valid) > 0
    mask = full_ranking_mask(data, "valid") if has_valid else None
    if not has_valid and fixed_epochs is None:
        log.warning("no validation positives: no early stopping, the last epoch is kept")
    if fixed_epochs is not None and fixed_epochs < 1:
        raise ConfigError(f"fixed_epochs must be >= 1, got {fixed_epochs}")

    if isinstance(model, ClosedFormRanker):
        if model.fits_on_device:
            model.to(device)  # solves, decompositions and the search where train.device says
        # an iterative fit (the scalable solver) chooses its passes on validation; a solve just fits
        validation = (lambda: _curve_metrics(valid_metrics(model, data, mask))) if has_valid else None
        passes, kept_pass = model.fit_on_validation(data.train.users, data.train.items, validation)
        if shared_gram is not None and has_valid and model.candidate_count():
            model.use_shared_eigen(read_shared_eigen(shared_gram, data, data.train.users, data.train.items))
        # among the candidates the model offers, on validation only
        choice = select(model, data, config.train.choice_rule, config.train.guard_additions, config.train.seed,
                        progress=progress, screen=config.train.screen_search) if has_valid else None
        model.use_shared_eigen(None)  # n_items^2 floats the final fit does not need
        if choice is not None and passes:  # every pass scored was a validation look as well
            choice = dataclasses.replace(choice, looks=choice.looks + len(passes))
        model.to(device)
        valid = valid_metrics(model, data, mask) if has_valid else {}
        curves = passes or [{"epoch": 0, "loss": float("nan"), **_curve_metrics(valid)}]
        return TrainResult(model.cpu(), curves, kept_pass, valid, selection=choice, chosen_with_profiles=chosen_with)

    model.to(device)
    batch_loss = distributed.training_module(model)  # DDP over the processes' parts of each batch, under torchrun
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    sampler = NegativeSampler(data.train.users, data.train.items, data.n_users, data.n_items, config.train.seed)
    best = EarlyStop(settings.patience)
    epochs = settings.epochs if fixed_epochs is None else fixed_epochs
    key = loop_key(spec, settings, config.train, data.train.users, data.train.items, seen, epochs,
                   fixed=fixed_epochs is not None)
    states = EpochStates(resume_dir, key)
    state = states.restore(model, optimizer, sampler, best) or LoopState(0, False, [], best, None, {})
    show = progress and is_main_process()
    bar = tqdm(range(state.epoch + 1, epochs + 1), initial=state.epoch, total=epochs, desc=f"train {spec.model}",
               disable=not show, unit="epoch")
    for epoch in bar if not state.finished else ():
        loss = _train_epoch(model, batch_loss, optimizer, sampler, settings, device)
        valid = valid_metrics(model, data, mask) if has_valid else {}
        state.curves.append({"epoch": epoch, "loss": loss, **_curve_metrics(valid)})
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
            log.info("early stop at epoch %d (best %d, valid %s %.4f)", epoch, best.setting, SELECTION_METRIC, best.score)
            break
    model.load_state_dict(state.best_state)
    return TrainResult(model.cpu(), state.curves, best.setting, state.best_valid, distributed.processes(),
                       chosen_with_profiles=chosen_with)


def _train_epoch(
    model: Ranker, batch_loss: torch.nn.Module, optimizer: torch.optim.Optimizer, sampler: NegativeSampler, settings,
    device,
) -> float:
    """One pass over freshly drawn negatives; `settings` is the model's section (an SGDConfig). `batch_loss` maps a
    global batch to this process's share of its loss (distributed.BatchShareLoss); the mean loss over processes is
    the epoch's loss over every example."""
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


def _curve_metrics(valid: dict) -> dict:
    return {"valid_hr@10": valid.get("hr@10", float("nan")), "valid_ndcg@10": valid.get("ndcg@10", float("nan"))}


def write_curves(path: str | Path, curves: list[dict]) -> None:
    """Training curves as CSV (one row per epoch) for `dvc plots`."""
    fields = list(curves[0]) if curves else ["epoch", "loss", "valid_hr@10", "valid_ndcg@10"]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(curves)


