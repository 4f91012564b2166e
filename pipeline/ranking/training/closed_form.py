"""Fitting a closed-form model (pop, ease, bert_rs): one fit, the choice among its candidates, one validation pass.

The choice is select.py's, on validation only; a model whose fit is iterative (the scalable solver) chooses its
passes there first. A search may start from the training Gram's decomposition made once per prepared data
(`bertrs gram`, pipeline/ranking/shared/gram.py) instead of taking its own.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from pipeline.config import RankingConfig
from pipeline.data.prepared import PreparedData
from pipeline.ranking.protocol import ClosedFormRanker
from pipeline.ranking.selection.select import select
from pipeline.ranking.shared.gram import read_shared_eigen
from pipeline.ranking.training.result import TrainResult, curve_metrics, valid_metrics
from pipeline.ranking.training.sampling import PairSet


def fit_closed_form(model: ClosedFormRanker, config: RankingConfig, data: PreparedData, mask: PairSet | None,
                    device: torch.device, progress: bool = True, shared_gram: Path | None = None,
                    chosen_with: str = "", final_fit_follows: bool = False) -> TrainResult:
    """Fit `model` on `data.train` and put it in the setting chosen on validation.

    Parameters
    ----------
    model : The untrained model, reading the profiles it chooses with.
    config : The ranking settings (`train.choice_rule`, `guard_additions`, `screen_search`,
        `search_precision`, `seed`).
    data : The prepared data; with no validation pairs nothing is chosen.
    mask : The validation ranking's mask (`full_ranking_mask(data, "valid")`), or None without validation.
    device : Where solves, decompositions and the search run, for models that fit on a device.
    progress : Show the search's progress.
    shared_gram : A `data/gram` folder to start the search from.
    chosen_with : TrainResult.chosen_with_profiles.
    final_fit_follows : A final fit on other pairs (`train.refit_with_validation`) will solve the chosen setting:
        it is not solved on these, and its validation metrics are the search's measurement of it.

    Returns
    -------
    The TrainResult, its model on the CPU (in the chosen setting unless `final_fit_follows`); one curve row (or one
    per pass scored).
    """
    has_valid = mask is not None
    if model.fits_on_device:
        model.to(device)
    validation = (lambda: curve_metrics(valid_metrics(model, data, mask))) if has_valid else None
    passes, kept_pass = model.fit_on_validation(data.train.users, data.train.items, validation)
    if shared_gram is not None and has_valid and model.candidate_count():
        model.use_shared_eigen(read_shared_eigen(shared_gram, data, data.train.users, data.train.items))
    train = config.train
    model.use_search_precision(getattr(torch, train.search_precision))
    choice = select(model, data, train.choice_rule, train.guard_additions, train.seed, progress=progress,
                    screen=train.screen_search, apply=not final_fit_follows) if has_valid else None
    model.use_shared_eigen(None)  # n_items^2 floats the final fit does not need
    if choice is not None and passes:  # every pass scored was a validation look as well
        choice = dataclasses.replace(choice, looks=choice.looks + len(passes))
    model.to(device)
    if choice is not None and final_fit_follows:
        valid = choice.validation(len(data.valid))
    else:
        valid = valid_metrics(model, data, mask) if has_valid else {}
    curves = passes or [{"epoch": 0, "loss": float("nan"), **curve_metrics(valid)}]
    return TrainResult(model.cpu(), curves, kept_pass, valid, selection=choice, chosen_with_profiles=chosen_with)
