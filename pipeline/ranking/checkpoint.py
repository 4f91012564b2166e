"""The data/models/<run>/ contract: what a trained run's folder holds, how it is written and how it is read back.

    model.safetensors   the state dict (profiles are NOT in it: they are fixed inputs reloaded from the cache, the
                        recency-weighted ones from the cache's reviews and the prepared data's review times)
    run.json            RunSpec, the shared train section and the model's own section (`model_settings`), data
                        fingerprint, cache path + fingerprint + provenance, best epoch, n_users, n_items, dim, the
                        settings the model chose on validation, the processes that trained it, and the pairs its
                        weights were last fitted on ("fitted_on": "train", or "train+valid" after the final fit),
                        and the user profiles a text model chose with ("chosen_with_profiles")

    save_checkpoint(out_dir, result, spec, config, data, profiles, cache_path, run_name)
    ckpt = load_checkpoint(out_dir, data)     # refuses other prepared data, another cache, or a run.json of an
                                              # older format (no model_settings): retrain it
    check_split_unseen(ckpt.info, split, where)   # stops where the run's final fit learned from `split`'s pairs

Readers (evaluate, recommend, serve) import this module, never the trainer.
"""

from __future__ import annotations

import dataclasses
import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from pipeline.config import (TEXT_MODELS, ConfigError, ModelsConfig, RankingConfig, RunSpec, TrainConfig, from_dict,
                             to_dict)
from pipeline.data.prepared import PreparedData
from pipeline.embeddings.cache import META_FILE, Profiles
from pipeline.io import DataError, atomic_dir, read_json
from pipeline.ranking.evaluation.ablation import model_profiles
from pipeline.ranking.protocol import Ranker
from pipeline.ranking.registry import build_model, load_model_profiles, section_type

if TYPE_CHECKING:
    from pipeline.ranking.training.result import TrainResult

WEIGHTS_FILE = "model.safetensors"
RUN_FILE = "run.json"
CACHE_IDENTITY_KEYS = ("encoder", "weights_fingerprint", "pooling", "max_length", "dim", "data_fingerprint", "profile")
# what a reload reads from run.json; "model_settings" (models.<its model>) exists since settings became per model
REQUIRED_KEYS = ("spec", "train", "model_settings", "data_fingerprint", "n_users", "n_items")
RETRAIN_HINT = "retrain the run with this version (`bertrs train`, or `dvc repro` in a DVC project)"


@dataclass
class Checkpoint:
    """A trained run read back by `load_checkpoint`.

    Attributes
    ----------
    model : The rebuilt model with its saved weights.
    spec : The run's RunSpec (model, embedding cache, shuffle).
    config : The shared train section and this model's section as recorded (the other models' at defaults).
    info : The run's run.json.
    profiles : The profiles as the model sees them (shuffled for the ablation); None for a model that reads no cache.
    """

    model: Ranker
    spec: RunSpec
    config: RankingConfig  # the shared train section and this model's section as recorded (others at defaults)
    info: dict  # run.json
    profiles: Optional[Profiles]  # as the model sees them (shuffled for the ablation)


def save_checkpoint(
    out_dir: str | Path,
    result: "TrainResult",
    spec: RunSpec,
    config: RankingConfig,
    data: PreparedData,
    profiles: Profiles | None = None,
    cache_path: str | Path | None = None,
    run_name: str | None = None,
) -> Path:
    """Write the checkpoint folder atomically. `profiles` are the cache's (unshuffled), for the fingerprint."""
    out_dir = Path(out_dir)
    embeddings = None
    if spec.model in TEXT_MODELS:
        if profiles is None or cache_path is None:
            raise ConfigError(f"model {spec.model}: a checkpoint needs the embedding cache's path and profiles")
        embeddings = {
            "path": str(cache_path),
            "fingerprint": profiles.fingerprint,
            "dim": profiles.dim,
            "meta": {k: profiles.meta.get(k) for k in CACHE_IDENTITY_KEYS},
        }
    info = {
        "run": run_name or out_dir.name,
        "spec": to_dict(spec),
        "train": to_dict(config.train),
        "model_settings": to_dict(config.section(spec.model)),  # models.<its model>: all a reload needs
        "data_fingerprint": data.fingerprint,
        "n_users": data.n_users,
        "n_items": data.n_items,
        "dim": embeddings["dim"] if embeddings else None,
        "embeddings": embeddings,
        "best_epoch": result.best_epoch,
        # measured on the training-only fit, before any final fit, with the profiles in chosen_with_profiles
        "best_valid": result.best_valid,
        "fitted_on": result.fitted_on,  # "train+valid": train.refit_with_validation refitted the choice
        # the user profiles the text settings were chosen with (tested with the cache's training-review ones)
        "chosen_with_profiles": result.chosen_with_profiles if profiles is not None else None,
        "processes": result.processes,  # trained together under torchrun (1: a plain run)
        # settings a closed-form model picked on validation (bert_rs: side weight, text match, text weight)
        "chosen": result.model.choices(),
        # how the choice was made (pipeline/ranking/selection/select.py): looks, its validation score, the guard's
        # measurement
        "selection": result.selection.summary() if result.selection is not None else None,
        # bert_rs: which solver ran (models.bert_rs.solver: auto resolves by the memory budget); load rebuilds it
        "bert_rs_solver": getattr(result.model, "solver", None),
        "weights": WEIGHTS_FILE,
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    state = {k: v.detach().cpu().contiguous() for k, v in result.model.state_dict().items()}
    with atomic_dir(out_dir) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE))
        (tmp / RUN_FILE).write_text(_json(info))
    return out_dir


def load_checkpoint(model_dir: str | Path, data: PreparedData, cache_path: str | Path | None = None) -> Checkpoint:
    """Rebuild a trained model, refusing other prepared data or a cache other than the one it was trained with.

    `cache_path` overrides the path recorded in run.json (e.g. a moved cache); its fingerprint must still match.
    """
    model_dir = Path(model_dir)
    info = read_json(model_dir / RUN_FILE)
    where = str(model_dir / RUN_FILE)
    check_run_info(info, where)
    if info.get("data_fingerprint") != data.fingerprint:
        raise DataError(
            f"{where}: checkpoint was trained on prepared data {info.get('data_fingerprint')}, "
            f"but {data.root} has fingerprint {data.fingerprint}; retrain on this data"
        )
    if (info.get("n_users"), info.get("n_items")) != (data.n_users, data.n_items):
        raise DataError(f"{where}: n_users/n_items {info.get('n_users')}/{info.get('n_items')} differ from the data")
    spec = from_dict(RunSpec, info["spec"], f"{where}: spec")
    shared = from_dict(TrainConfig, info["train"], f"{where}: train")
    try:
        section = from_dict(section_type(spec.model), info["model_settings"], f"{where}: model_settings")
    except ConfigError as error:  # e.g. bert_rs's flat settings, before each solver had its own section
        raise DataError(f"{error}: this run's settings are not this version's; {RETRAIN_HINT}") from None
    if info.get("bert_rs_solver"):  # the solver that ran, not the one `auto` would pick on this machine today
        section = section.with_solver(info["bert_rs_solver"])
    config = RankingConfig(shared, dataclasses.replace(ModelsConfig(), **{spec.model: section}))
    profiles = None
    if spec.model in TEXT_MODELS:
        recorded = info.get("embeddings") or {}
        path = resolve_cache_path(model_dir, recorded.get("path"), cache_path)
        profiles = load_model_profiles(path, data, section, shared)
        check_same_cache(recorded, profiles, where, path)
    seen_profiles = model_profiles(spec, profiles, config.train.seed)
    model = build_model(spec, config, data.n_users, data.n_items, seen_profiles)
    state = load_file(str(model_dir / info.get("weights", WEIGHTS_FILE)))
    _resize_buffers(model, state)
    model.load_state_dict(state)
    model.eval()
    return Checkpoint(model, spec, config, info, seen_profiles)


def fitted_on(info: dict) -> str:
    """The pairs a run's weights were last fitted on ("train" for runs written before the final fit existed)."""
    return info.get("fitted_on", "train")


def learned_from(info: dict, split: str) -> bool:
    """Whether the run's weights were fitted on `split`'s pairs ("valid": after the final fit)."""
    return split in fitted_on(info).split("+")


def check_split_unseen(info: dict, split: str, where: str) -> None:
    """Stop before scoring a run on a split its final fit learned from: its validation numbers would count pairs it
    was fitted on (the numbers measured before that fit are run.json's best_valid)."""
    if learned_from(info, split):
        raise DataError(
            f"{where}: this run was fitted on training + {split} pairs (train.refit_with_validation: true), so it "
            f"cannot be evaluated on {split}; its {split} metrics before that fit are in run.json's best_valid, or "
            "retrain with train.refit_with_validation: false to rank the split again"
        )


def check_run_info(info: object, where: str) -> None:
    """Stop on a run.json a model cannot be rebuilt from, naming what is missing and how to get a current one. A
    run trained before per-model settings has no "model_settings" (its "train" then holds every model's knobs)."""
    if not isinstance(info, dict):
        raise DataError(f"{where}: expected a JSON object (a run written by `bertrs train`), got "
                        f"{type(info).__name__}; {RETRAIN_HINT}")
    missing = [key for key in REQUIRED_KEYS if key not in info]
    if not missing:
        return
    if missing == ["model_settings"]:
        why = ("it was written before each model had its own settings section (models.<name>), which this "
               "version needs to rebuild the model")
    else:
        why = "it is not a complete run written by this version of `bertrs train`"
    raise DataError(f"{where}: has no {', '.join(repr(k) for k in missing)}: {why}; {RETRAIN_HINT}")


def resolve_cache_path(model_dir: str | Path, recorded: str | None, override: str | Path | None = None) -> Path:
    """The embedding cache a checkpoint reads, found wherever the command runs.

    run.json records the cache as given to `bertrs train`, usually relative to the project root. An explicit
    `override` wins; otherwise the recorded path is tried as is (absolute, or relative to the working folder),
    then relative to each folder above the model folder (the project root of data/models/<run>). When none holds a
    cache, the error lists every path looked up.
    """
    where = Path(model_dir) / RUN_FILE
    if override is not None:
        path = Path(override)
        if not (path / META_FILE).is_file():
            raise DataError(f"{path}: embedding cache given as an override not found ({META_FILE} missing)")
        return path
    if not recorded:
        raise DataError(f"{where}: records no embedding cache path; pass the cache folder explicitly (--embeddings)")
    recorded_path = Path(recorded)
    tried = [recorded_path]
    if not recorded_path.is_absolute():
        tried += [parent / recorded_path for parent in Path(model_dir).resolve().parents]
    for path in tried:
        if (path / META_FILE).is_file():
            return path
    raise DataError(
        f"{where}: embedding cache {recorded!r} (recorded at training time) not found; looked for {META_FILE} in "
        + ", ".join(str(p) for p in tried[:4]) + (f" and {len(tried) - 4} more folders above" if len(tried) > 4 else "")
        + ". Pass the cache folder explicitly (--embeddings), or rerun `bertrs embed`."
    )


def check_same_cache(recorded: dict, profiles: Profiles, where: str, path: Path) -> None:
    """Refuse a cache whose identity differs from the one recorded at training time, naming the differences."""
    if recorded.get("fingerprint") == profiles.fingerprint:
        return
    old = recorded.get("meta") or {}
    diffs = [
        f"{k}: trained with {old.get(k)!r}, cache has {profiles.meta.get(k)!r}"
        for k in CACHE_IDENTITY_KEYS
        if old.get(k) != profiles.meta.get(k)
    ]
    raise DataError(
        f"{where}: embedding cache {path} is not the one this model was trained with "
        f"(fingerprint {profiles.fingerprint} != {recorded.get('fingerprint')}); differs in "
        + ("; ".join(diffs) or "fingerprint")
        + ". Retrain, or pass the original cache."
    )


def _resize_buffers(model: Ranker, state: dict[str, torch.Tensor]) -> None:
    """Closed-form baselines size some buffers at fit time (EASE's CSR); match them before loading."""
    for name, buffer in model.named_buffers():
        if name in state and buffer.shape != state[name].shape:
            owner = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(owner, name.rpartition(".")[2], torch.empty_like(state[name]))


def _json(data: dict) -> str:
    return json.dumps(data, indent=2, default=lambda x: float(x) if isinstance(x, np.floating) else str(x)) + "\n"
