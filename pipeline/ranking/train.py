"""Training every ranker the same way, with early stopping on validation, and checkpoints that know their inputs.

    result = train(spec, config, data, profiles)          # profiles only for text models
    save_checkpoint(out_dir, result, spec, config, data, profiles, cache_path, run_name)
    ckpt = load_checkpoint(out_dir, data)                 # refuses other prepared data or another cache

Model selection and early stopping look at the VALIDATION split's full-ranking NDCG@10 and nothing else (the metric
every model is chosen and compared on); the validation ranking masks training pairs and validation positives only,
so the test split is never touched here. Negatives are redrawn every epoch. Closed-form baselines (pop, ease) "train" through the same
entry point: one fit, one validation pass, one row of curves.

A checkpoint is a folder:
    model.safetensors   the state dict (profiles are NOT in it: they are fixed inputs reloaded from the cache)
    run.json            RunSpec, the shared train section and the model's own section, data fingerprint, cache path + fingerprint + provenance, best epoch,
                        n_users, n_items, dim
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import logging
import math
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from pipeline.config import TEXT_MODELS, ConfigError, ModelsConfig, RankingConfig, RunSpec, TrainConfig, from_dict, to_dict
from pipeline.data.prepared import PreparedData
from pipeline.embeddings.cache import META_FILE, Profiles, load_profiles
from pipeline.io import DataError, atomic_dir, atomic_path, read_json
from pipeline.ranking.evaluate import full_ranking_mask, rank_full
from pipeline.ranking.memory import Shape, check_fit
from pipeline.ranking.metrics import metrics_from_ranks
from pipeline.ranking.models import shuffle_profiles
from pipeline.ranking.protocol import ClosedFormRanker, Ranker
from pipeline.ranking.registry import bert_rs_solver, entry, section_type
from pipeline.ranking.sampling import NegativeSampler, PairSet

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
RUN_FILE = "run.json"
SELECTION_METRIC = "ndcg@10"  # on the validation split, full-ranking protocol
CACHE_IDENTITY_KEYS = ("encoder", "weights_fingerprint", "pooling", "max_length", "dim", "data_fingerprint", "profile")


@dataclass
class TrainResult:
    model: Ranker
    curves: list[dict]  # one row per epoch: epoch, loss, valid_hr@10, valid_ndcg@10 (full ranking)
    best_epoch: int
    best_valid: dict  # validation metrics of the selected epoch


@dataclass
class Checkpoint:
    model: Ranker
    spec: RunSpec
    config: RankingConfig  # the shared train section and this model's section as recorded (others at defaults)
    info: dict  # run.json
    profiles: Optional[Profiles]  # as the model sees them (shuffled for the ablation)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA device is available")
    return torch.device(name)


def build_model(
    spec: RunSpec, config: RankingConfig, n_users: int, n_items: int, profiles: Profiles | None = None
) -> Ranker:
    """The untrained model for a run, from its model's section (pipeline/ranking/registry.py); `profiles` must
    already be shuffled when the run asks for the ablation."""
    model = entry(spec.model)
    if model.reads_text and profiles is None:
        raise ConfigError(f"model {spec.model} needs an embedding cache (--embeddings)")
    return model.build(config.section(spec.model), config.train, n_users, n_items, profiles)


def model_profiles(spec: RunSpec, profiles: Profiles | None, seed: int) -> Profiles | None:
    """The profiles a run's model sees: none, the cache's, or the cache's shuffled (seeded by train.seed)."""
    if spec.model not in TEXT_MODELS:
        return None
    if profiles is None:
        raise ConfigError(f"model {spec.model} needs an embedding cache (--embeddings)")
    return shuffle_profiles(profiles, seed) if spec.shuffle else profiles


def check_run_memory(spec: RunSpec, config: RankingConfig, data: PreparedData, profiles: Profiles | None) -> float:
    """Stop before fitting when the run's estimated peak memory exceeds train.memory_budget_gb (see memory.py)."""
    name, section, budget = spec.model, config.section(spec.model), config.train.memory_budget_gb
    if name == "bert_rs" and bert_rs_solver(section, config.train, data.n_items) == "scalable":
        name = "scalable"
    shape = Shape(data.n_users, data.n_items, len(data.train.users), profiles.dim if profiles is not None else 0)
    sizes = {}
    if name == "scalable":
        sizes = {"rank": section.scalable_rank, "batch_users": section.scalable_batch_users}
    elif spec.model not in ("pop", "ease", "bert_rs"):
        sizes = {"factors": section.factors, "num_negatives": section.num_negatives}
    return check_fit(name, shape, budget, **sizes)


def valid_metrics(model: nn.Module, data: PreparedData, mask: PairSet | None = None) -> dict:
    """Full-ranking HR@10 / NDCG@10 on the validation split: the only signal model selection sees. `mask` is
    `full_ranking_mask(data, "valid")`, built once per run by the caller (it never includes test pairs)."""
    mask = full_ranking_mask(data, "valid") if mask is None else mask
    return metrics_from_ranks(rank_full(model, data.valid, mask).ranks, [10])


def train(
    spec: RunSpec,
    config: RankingConfig,
    data: PreparedData,
    profiles: Profiles | None = None,
    progress: bool = True,
    fixed_epochs: int | None = None,
) -> TrainResult:
    """Fit one run's model on `data.train`, selecting the epoch by validation full-ranking NDCG@10 with early
    stopping. `fixed_epochs` trains exactly that many epochs and keeps the last one (validation is still recorded,
    never used): an ablation that must hold its partner's epoch count instead of choosing its own."""
    torch.manual_seed(config.train.seed)
    device = resolve_device(config.train.device)
    check_run_memory(spec, config, data, profiles)
    model = build_model(spec, config, data.n_users, data.n_items, model_profiles(spec, profiles, config.train.seed))
    settings = config.section(spec.model)
    has_valid = len(data.valid) > 0
    mask = full_ranking_mask(data, "valid") if has_valid else None
    if not has_valid:
        log.warning("no validation positives: no early stopping, the last epoch is kept")
    if fixed_epochs is not None and fixed_epochs < 1:
        raise ConfigError(f"fixed_epochs must be >= 1, got {fixed_epochs}")

    if isinstance(model, ClosedFormRanker):
        model.fit(data.train.users, data.train.items)
        if has_valid:
            model.select_on_validation(data)  # a closed-form model's own grid, on validation only
        model.to(device)
        valid = valid_metrics(model, data, mask) if has_valid else {}
        row = {"epoch": 0, "loss": float("nan"), **_curve_metrics(valid)}
        return TrainResult(model.cpu(), [row], 0, valid)

    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    sampler = NegativeSampler(data.train.users, data.train.items, data.n_users, data.n_items, config.train.seed)
    curves: list[dict] = []
    best_score, best_epoch, best_state, best_valid, stale = -math.inf, 0, None, {}, 0
    epochs = settings.epochs if fixed_epochs is None else fixed_epochs
    bar = tqdm(range(1, epochs + 1), desc=f"train {spec.model}", disable=not progress, unit="epoch")
    for epoch in bar:
        loss = _train_epoch(model, optimizer, sampler, settings, device)
        valid = valid_metrics(model, data, mask) if has_valid else {}
        curves.append({"epoch": epoch, "loss": loss, **_curve_metrics(valid)})
        bar.set_postfix(loss=f"{loss:.4f}", valid_ndcg10=f"{valid.get(SELECTION_METRIC, float('nan')):.4f}")
        # without validation, or with the epoch count fixed from outside: the latest epoch wins
        score = epoch if fixed_epochs is not None else valid.get(SELECTION_METRIC, epoch)
        if score > best_score:
            best_score, best_epoch, best_valid, stale = score, epoch, valid, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= settings.patience:
                log.info("early stop at epoch %d (best %d, valid %s %.4f)", epoch, best_epoch, SELECTION_METRIC, best_score)
                break
    model.load_state_dict(best_state)
    return TrainResult(model.cpu(), curves, best_epoch, best_valid)


def _train_epoch(
    model: nn.Module, optimizer: torch.optim.Optimizer, sampler: NegativeSampler, settings, device
) -> float:
    """One pass over freshly drawn negatives; `settings` is the model's section (an SGDConfig)."""
    model.train()
    users, pos, neg = (torch.as_tensor(a, device=device) for a in sampler.epoch(settings.num_negatives))
    total, seen = 0.0, 0
    for start in range(0, len(users), settings.batch_size):
        batch = slice(start, start + settings.batch_size)
        loss = model.loss(users[batch], pos[batch], neg[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = len(users[batch])
        total, seen = total + float(loss.detach()) * n, seen + n
    return total / max(seen, 1)


def _curve_metrics(valid: dict) -> dict:
    return {"valid_hr@10": valid.get("hr@10", float("nan")), "valid_ndcg@10": valid.get("ndcg@10", float("nan"))}


# ---------------------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(
    out_dir: str | Path,
    result: TrainResult,
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
        "best_valid": result.best_valid,
        # settings a closed-form model picked on validation (bert_rs: side weight, text match, text weight)
        "chosen": result.model.choices(),
        # bert_rs: which solver ran (models.bert_rs.solver: auto resolves by the memory budget); load rebuilds it
        "bert_rs_solver": result.model.solver if spec.model == "bert_rs" else None,
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
    if info.get("data_fingerprint") != data.fingerprint:
        raise DataError(
            f"{where}: checkpoint was trained on prepared data {info.get('data_fingerprint')}, "
            f"but {data.root} has fingerprint {data.fingerprint}; retrain on this data"
        )
    if (info.get("n_users"), info.get("n_items")) != (data.n_users, data.n_items):
        raise DataError(f"{where}: n_users/n_items {info.get('n_users')}/{info.get('n_items')} differ from the data")
    spec = from_dict(RunSpec, info["spec"], f"{where}: spec")
    shared = from_dict(TrainConfig, info["train"], f"{where}: train")
    section = from_dict(section_type(spec.model), info["model_settings"], f"{where}: model_settings")
    if info.get("bert_rs_solver"):  # the solver that ran, not the one `auto` would pick on this machine today
        section = dataclasses.replace(section, solver=info["bert_rs_solver"])
    config = RankingConfig(shared, dataclasses.replace(ModelsConfig(), **{spec.model: section}))
    profiles = None
    if spec.model in TEXT_MODELS:
        recorded = info.get("embeddings") or {}
        path = resolve_cache_path(model_dir, recorded.get("path"), cache_path)
        profiles = load_profiles(
            path, data_fingerprint=data.fingerprint, n_users=data.n_users, n_items=data.n_items
        )
        check_same_cache(recorded, profiles, where, path)
    seen_profiles = model_profiles(spec, profiles, config.train.seed)
    model = build_model(spec, config, data.n_users, data.n_items, seen_profiles)
    state = load_file(str(model_dir / info.get("weights", WEIGHTS_FILE)))
    _resize_buffers(model, state)
    model.load_state_dict(state)
    model.eval()
    return Checkpoint(model, spec, config, info, seen_profiles)


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


def _resize_buffers(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Closed-form baselines size some buffers at fit time (EASE's CSR); match them before loading."""
    for name, buffer in model.named_buffers():
        if name in state and buffer.shape != state[name].shape:
            owner = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
            setattr(owner, name.rpartition(".")[2], torch.empty_like(state[name]))


def write_curves(path: str | Path, curves: list[dict]) -> None:
    """Training curves as CSV (one row per epoch) for `dvc plots`."""
    fields = list(curves[0]) if curves else ["epoch", "loss", "valid_hr@10", "valid_ndcg@10"]
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(curves)


def _json(data: dict) -> str:
    return json.dumps(data, indent=2, default=lambda x: float(x) if isinstance(x, np.floating) else str(x)) + "\n"
