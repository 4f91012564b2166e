"""`bertrs train`: fit one run (a model, and for text models an embedding cache) and write its checkpoint + curves.

    bertrs train --prepared data/prepared --run bert_rs --out data/models/bert_rs \
        --curves metrics/curves/bert_rs.csv --params params.yaml --embeddings data/embeddings/minilm

`--embeddings-root data/embeddings` instead resolves the cache from the run's encoder name
(`text_runs.NAME.embeddings`).

The run comes from `params.yaml` `runs.<NAME>` or `text_runs.<NAME>`; `--model` / `--shuffle` override it or define
an ad-hoc run. The training parameters come from the shared `train` section and the model's `models.<MODEL>`.

The same command trains a neural model on several processes (pipeline/ranking/training/distributed.py):

    torchrun --standalone --nproc_per_node 2 -- $(which bertrs) train --prepared data/prepared --run neumf ...

(`--` keeps torchrun from taking `--run` for an abbreviation of its own `--run-path`.)

Only the first process writes; a closed-form model (pop, ease, bert_rs) is fitted by the first process alone.
"""

from __future__ import annotations

import dataclasses
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import typer

from pipeline.config import MODELS, TEXT_MODELS, ConfigError, RunSpec
from pipeline.data.prepared import load_prepared
from pipeline.io import default_work_dir
from pipeline.ranking.checkpoint import save_checkpoint
from pipeline.launch import is_main_process
from pipeline.ranking.training.distributed import process_group, trains_by_sgd
from pipeline.ranking.registry import load_model_profiles
from pipeline.ranking.training.result import resolve_device
from pipeline.ranking.training.train import train, write_curves
from stages.common import PARAMS_OPTION, read_params, user_errors


def resolve_run(runs: dict[str, RunSpec], name: str, model: Optional[str], shuffle: Optional[bool]) -> RunSpec:
    """params.runs[name], with CLI overrides; without such a run, `--model` is required."""
    if name in runs:
        spec = runs[name]
    elif model is None:
        known = ", ".join(sorted(runs)) or "none"
        raise ConfigError(f"runs.{name}: no such run in params runs or text_runs (known: {known}); "
                          "pass --model to define one")
    else:
        spec = RunSpec(model=model)  # type: ignore[arg-type]
    if model is not None:
        if model not in MODELS:
            raise ConfigError(f"--model: {model!r} is not one of {list(MODELS)}")
        spec = dataclasses.replace(spec, model=model)  # type: ignore[arg-type]
    if shuffle is not None:
        spec = dataclasses.replace(spec, shuffle=shuffle)
    if spec.shuffle and spec.model not in TEXT_MODELS:
        raise ConfigError(f"--shuffle: model {spec.model} has no profiles to shuffle")
    return spec


@user_errors
def main(
    prepared: Path = typer.Option(Path("data/prepared"), help="prepared-data folder (`bertrs prepare`)"),
    run: str = typer.Option(..., help="run name: a key of params.yaml `runs` or `text_runs`, or any name with --model"),
    out: Optional[Path] = typer.Option(None, help="checkpoint folder [default: data/models/RUN]"),
    curves: Optional[Path] = typer.Option(None, help="training curves CSV [default: metrics/curves/RUN.csv]"),
    params: Path = PARAMS_OPTION,
    embeddings: Optional[Path] = typer.Option(
        None, help="embedding cache folder (text models); wins over --embeddings-root"),
    embeddings_root: Optional[Path] = typer.Option(
        None, help="folder of caches: text runs read ROOT/<text_runs.NAME.embeddings> (e.g. data/embeddings)"
    ),
    model: Optional[str] = typer.Option(None, help=f"override the run's model: {', '.join(MODELS)}"),
    shuffle: Optional[bool] = typer.Option(None, "--shuffle/--no-shuffle", help="ablation: shuffle the profiles"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="show a progress bar"),
    gram: Optional[Path] = typer.Option(
        None, help="shared-gram folder (`bertrs gram`): closed-form searches start from its decomposition"),
) -> None:
    """Train one run, selecting the epoch on validation NDCG@10; write the checkpoint and curves."""
    config = read_params(params)
    spec = resolve_run(config.all_runs(), run, model, shuffle)
    sgd = trains_by_sgd(config.ranking.section(spec.model))
    if not sgd and not is_main_process():
        typer.echo(f"{run}: {spec.model} is fitted in closed form by the first process alone; nothing to do here")
        return
    data = load_prepared(prepared)
    profiles = None
    if spec.model in TEXT_MODELS:
        if embeddings is None and embeddings_root is not None and spec.embeddings is not None:
            embeddings = embeddings_root / spec.embeddings
        if embeddings is None:
            raise ConfigError(
                f"--embeddings: model {spec.model} needs an embedding cache folder "
                "(or --embeddings-root with text_runs.NAME.embeddings set)"
            )
        profiles = load_model_profiles(embeddings, data, config.ranking.section(spec.model), config.ranking.train,
                                       choosing=True)
    out = out or Path("data/models") / run
    with process_group(resolve_device(config.ranking.train.device)) if sgd else nullcontext():
        result = train(spec, config.ranking, data, profiles, progress=progress, resume_dir=default_work_dir(out),
                       shared_gram=gram)
    if not is_main_process():
        return
    save_checkpoint(out, result, spec, config.ranking, data, profiles, embeddings, run_name=run)
    shutil.rmtree(default_work_dir(out), ignore_errors=True)  # the epoch states a rerun would have resumed from
    write_curves(curves or Path("metrics/curves") / f"{run}.csv", result.curves)
    chosen = f", chosen on validation {result.model.choices()}" if result.model.choices() is not None else ""
    typer.echo(f"{run}: best epoch {result.best_epoch}, valid {result.best_valid}{chosen} -> {out}")
