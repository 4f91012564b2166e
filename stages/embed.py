"""`bertrs embed`: encode every review with an encoder folder and write the embedding cache; `bertrs cache info`.

    bertrs embed --prepared data/prepared --encoder-dir data/encoders/minilm --name minilm \
        --out data/embeddings/minilm --params params.yaml
    bertrs embed --prepared data/prepared --encoder-dir data/encoders/minilm \
        --name minilm --out data/embeddings/minilm --name minilm_mean --out data/embeddings/minilm_mean
    bertrs cache info data/embeddings/minilm

Reads the `embed` section (EmbedConfig) and each name's `encoders` entry. Several `--name/--out` pairs encode the
reviews once and write one cache per name: the encoders must share weights (same model, none fine-tuned) and
differ only in pooling. Shards for resuming live in `<out>.partial/` (outside the DVC output); a cache folder
appears only when complete.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pipeline.config import ConfigError, Params
from pipeline.embeddings import cache
from pipeline.embeddings.build import build_caches
from stages.common import PARAMS_OPTION, read_params, user_errors


def check_shared_weights(params: Params, names: list[str]) -> None:
    """Names encoded in one pass must read the same weights: same model, and no fine-tuning of any of them."""
    if len(names) < 2:
        return
    for name in names:
        if name not in params.encoders:
            raise ConfigError(f"encoders.{name}: not defined (names in one pass must be keys of `encoders`)")
    models = {params.encoders[n].model for n in names}
    tuned = [n for n in names if params.finetune_reason(n) is None]
    if len(models) > 1 or tuned:
        raise ConfigError(f"encoders {names} cannot share one pass: they must have the same model and none may be "
                          f"fine-tuned (models {sorted(models)}, fine-tuned {tuned})")


@user_errors
def main(
    prepared: Path = typer.Option(..., "--prepared", help="prepared-data folder (from `bertrs prepare`)"),
    encoder_dir: str = typer.Option(..., "--encoder-dir", help="encoder folder (from `bertrs finetune`) or a spec"),
    name: list[str] = typer.Option(..., "--name", help="encoder name recorded in the cache (a key of params "
                                   "`encoders`); repeat with --out for encoders that differ only in pooling"),
    out: list[Path] = typer.Option(..., "--out", help="output folder for the embedding cache, one per --name"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Encode all reviews, build training-only user/item profiles and the item index, with provenance."""
    if len(name) != len(out):
        raise ConfigError(f"--name given {len(name)} times but --out {len(out)} times: one output per name")
    settings = read_params(params)
    check_shared_weights(settings, name)
    finals = build_caches(prepared, encoder_dir, {n: settings.embed_for(n) for n in name}, dict(zip(name, out)))
    for (n, final), path in zip(finals.items(), out):
        typer.echo(f"cache {n} -> {path}: {final['n_reviews']} reviews, dim {final['dim']}, "
                   f"pooling {final['pooling']}, backend {final['backend']}")


@user_errors
def cache_info(path: Path = typer.Argument(..., help="embedding cache folder")) -> None:
    """Print a cache's provenance (encoder, weights fingerprint, pooling, data fingerprint, versions) and sizes."""
    typer.echo(json.dumps(cache.cache_info(path), indent=2, default=str))
