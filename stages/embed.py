"""`bertrs embed`: encode every review with an encoder folder and write the embedding cache; `bertrs cache info`.

    bertrs embed --prepared data/prepared --encoder-dir data/encoders/minilm --name minilm \
        --out data/embeddings/minilm --params params.yaml
    bertrs cache info data/embeddings/minilm

Reads the `embed` section (EmbedConfig). Shards for resuming live in `<out>.partial/` (outside the DVC output);
the cache folder appears only when complete.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from pipeline.embeddings import cache
from pipeline.embeddings.build import build_cache
from stages.common import PARAMS_OPTION, read_params, user_errors


@user_errors
def main(
    prepared: Path = typer.Option(..., "--prepared", help="prepared-data folder (from `bertrs prepare`)"),
    encoder_dir: str = typer.Option(..., "--encoder-dir", help="encoder folder (from `bertrs finetune`) or a spec"),
    name: str = typer.Option(..., "--name", help="encoder name recorded in the cache (a key of params `encoders`)"),
    out: Path = typer.Option(..., "--out", help="output folder for the embedding cache"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Encode all reviews, build training-only user/item profiles and the item index, with provenance."""
    final = build_cache(prepared, encoder_dir, name, read_params(params).embed_for(name), out)
    typer.echo(f"cache {name} -> {out}: {final['n_reviews']} reviews, dim {final['dim']}, pooling {final['pooling']}")


@user_errors
def cache_info(path: Path = typer.Argument(..., help="embedding cache folder")) -> None:
    """Print a cache's provenance (encoder, weights fingerprint, pooling, data fingerprint, versions) and sizes."""
    typer.echo(json.dumps(cache.cache_info(path), indent=2, default=str))
