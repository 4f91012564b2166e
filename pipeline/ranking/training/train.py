"""Training every ranker the same way: the fit that chooses on validation, then the final fit.

    result = train(spec, config, data, profiles)          # profiles only for text models

`fit_on_training` builds the run's model and fits it on the training pairs, choosing on validation only: a
closed-form model by one fit and a choice among its candidates (closed_form.py), a neural model by the SGD loop with
early stopping (sgd.py). With `train.refit_with_validation` (the default) `refit_with_validation` then fits what was
chosen once more on training + validation pairs: a closed-form model refits its chosen setting, a neural model
retrains from the same seed for exactly its chosen number of epochs. Nothing is chosen again, the validation
numbers of the result are those of the training-only fit, and the test split is still unread. Reviews, profiles and
the text gram stay training-only; which user profiles a text model chooses with is lagged.py's rule. The checkpoint
written from the result is pipeline/ranking/checkpoint.py's contract.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from pipeline.config import ConfigError, RankingConfig, RunSpec
from pipeline.data.prepared import Interactions, PreparedData
from pipeline.embeddings.cache import Profiles
from pipeline.io import atomic_path
from pipeline.ranking.evaluation.ablation import model_profiles
from pipeline.ranking.evaluation.evaluate import full_ranking_mask
from pipeline.ranking.protocol import ClosedFormRanker
from pipeline.ranking.registry import build_model, entry, fit_memory
from pipeline.ranking.training.closed_form import fit_closed_form
from pipeline.ranking.training.lagged import profiles_to_choose_with, without_lag
from pipeline.ranking.training.memory import Shape, check_fit
from pipeline.ranking.training.result import TrainResult, resolve_device
from pipeline.ranking.training.sgd import fit_by_sgd

log = logging.getLogger(__name__)


def check_run_memory(spec: RunSpec, config: RankingConfig, data: PreparedData, profiles: Profiles | None) -> float:
    """Stop before fitting when the run's estimated peak memory (the registry's estimate for its model and settings)
    exceeds train.memory_budget_gb (see memory.py); returns the estimate in bytes."""
    shape = Shape(data.n_users, data.n_items, len(data.train.users), profiles.dim if profiles is not None else 0)
    need, advice = fit_memory(spec.model, shape, config)
    return check_fit(need, f"model {spec.model}", shape, config.train.memory_budget_gb, advice)


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
    neural model's loop writes its state after every epoch and a rerun takes it up
    (pipeline/ranking/training/resume.py). `shared_gram`: a `data/gram` folder (pipeline/ranking/shared/gram.py) whose
    decomposition of the training Gram a closed-form search starts from instead of taking its own."""
    refit = config.train.refit_with_validation and len(data.valid) > 0
    if not refit:
        profiles = without_lag(profiles)  # tested as chosen: nothing lags
    result = fit_on_training(spec, config, data, profiles, progress, fixed_epochs, resume_dir, shared_gram,
                             final_fit_follows=refit)
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
    final_fit_follows: bool = False,
) -> TrainResult:
    """`train` without the final fit: the model as chosen on validation, fitted on `data.train` alone. Given
    profiles with a lagged view, a closed-form model is returned reading the lagged user profiles (as it chose):
    `refit_with_validation` puts the whole ones back; a neural text model choosing its epochs (`fixed_epochs`
    None) trains with the lagged ones, and the final fit retrains with the whole ones. Score test only after it.
    `final_fit_follows`: a closed-form model's choice is left for `refit_with_validation` to solve
    (`fit_closed_form`)."""
    if fixed_epochs is not None and fixed_epochs < 1:
        raise ConfigError(f"fixed_epochs must be >= 1, got {fixed_epochs}")
    device = resolve_device(config.train.device)
    check_run_memory(spec, config, data, profiles)
    closed_form = entry(spec.model).closed_form
    # a closed-form model always chooses; a neural model chooses its epochs unless they are fixed from outside
    seen, chosen_with = profiles_to_choose_with(model_profiles(spec, profiles, config.train.seed),
                                                chooses=closed_form or fixed_epochs is None)
    torch.manual_seed(config.train.seed)
    model = build_model(spec, config, data.n_users, data.n_items, seen)
    has_valid = len(data.valid) > 0
    mask = full_ranking_mask(data, "valid") if has_valid else None
    if not has_valid and fixed_epochs is None:
        log.warning("no validation positives: no early stopping, the last epoch is kept")
    if closed_form:
        return fit_closed_form(model, config, data, mask, device, progress, shared_gram, chosen_with,
                               final_fit_follows)
    return fit_by_sgd(model, spec, config, data, mask, device, seen, fixed_epochs, resume_dir, progress, chosen_with)


def write_curves(path: str | Path, curves: list[dict]) -> None:
    """Training curves as CSV (one row per epoch) for `dvc plots`."""
    fields = list(curves[0]) if curves else ["epoch", "loss", "valid_hr@10", "valid_ndcg@10"]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(curves)


