"""What a fit returns, the device it runs on, and the validation numbers every choice is made on.

Model selection and early stopping look at the VALIDATION split's full-ranking NDCG@10 and nothing else; the
validation ranking masks training pairs and validation positives only, so the test split is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.config import ConfigError
from pipeline.data.prepared import PreparedData
from pipeline.ranking.evaluation.evaluate import full_ranking_mask, rank_full
from pipeline.ranking.evaluation.metrics import metrics_from_ranks
from pipeline.ranking.protocol import Ranker
from pipeline.ranking.selection.choice import Choice
from pipeline.ranking.training import distributed
from pipeline.ranking.training.lagged import WHOLE_PROFILES
from pipeline.ranking.training.sampling import PairSet


@dataclass
class TrainResult:
    """A fitted run.

    Attributes
    ----------
    model : The fitted model, on the CPU.
    curves : One row per epoch (epoch, loss, valid_hr@10, valid_ndcg@10, full ranking); the scalable solver's rows
        are its passes, scored as the item model alone.
    best_epoch : The epoch (or pass) kept; 0 for a solve.
    best_valid : Validation metrics of what was kept.
    processes : Processes that trained it together (torchrun).
    selection : A closed-form model's choice among its candidates (select.py).
    fitted_on : The pairs `model` was last fitted on: "train", or "train+valid" after the final fit.
    chosen_with_profiles : The user profiles its choices were made with (lagged.py).
    """

    model: Ranker
    curves: list[dict]
    best_epoch: int
    best_valid: dict
    processes: int = 1
    selection: Choice | None = None
    fitted_on: str = "train"
    chosen_with_profiles: str = WHOLE_PROFILES


def resolve_device(name: str) -> torch.device:
    """`train.device` as a torch device: auto is CUDA when torch sees one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is available")
    return torch.device(name)


def valid_metrics(model: Ranker, data: PreparedData, mask: PairSet | None = None) -> dict:
    """Full-ranking HR@10 / NDCG@10 on the validation split: the only signal model selection sees.

    Parameters
    ----------
    model : The model as it stands.
    data : The prepared data.
    mask : `full_ranking_mask(data, "valid")`, built once per run by the caller (it never includes test pairs).

    Returns
    -------
    {"hr@10": ..., "ndcg@10": ...} over every validation user; under torchrun each process ranks its part of the
    users and every process gets the metrics of all of them.
    """
    mask = full_ranking_mask(data, "valid") if mask is None else mask
    ranks = rank_full(model, distributed.this_process_part(data.valid), mask).ranks
    return metrics_from_ranks(distributed.gather_in_order(ranks), [10])


def curve_metrics(valid: dict) -> dict:
    """A curve row's validation columns (NaN where there is no validation)."""
    return {"valid_hr@10": valid.get("hr@10", float("nan")), "valid_ndcg@10": valid.get("ndcg@10", float("nan"))}
