"""`bertrs embed`: encode every review with an encoder folder and write the embedding cache; `bertrs cache info`.

    bertrs embed --prepared data/prepared --encoder-dir data/encoders/minilm --name minilm \
        --out data/embeddings/minilm --params params.yaml
    bertrs cache info data/embeddings/minilm

Reads the `embed` section (EmbedConfig). Shards for resuming live in `<out>.partial/` (outside the DVC output);
the cache folder appears only when complete.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow.parquet as pq
import typer

from pipeline.data.prepared import FILES, STATS_FILE
from pipeline.embeddings import cache
from pipeline.io import DataError, read_json
from pipeline.text.encode import load_encoder, set_threads
from pipeline.text.encoders import resolve_encoder, weights_fingerprint
from pipeline.text.finetune import SOURCE_FILE
from stages.common import PARAMS_OPTION, read_params, user_errors


def _rows(path: Path) -> int:
    if not path.is_file():
        raise DataError(f"{path}: file not found (has `bertrs prepare` run?)")
    return pq.ParquetFile(path).metadata.num_rows


@user_errors
def main(
    prepared: Path = typer.Option(..., "--prepared", help="prepared-data folder (from `bertrs prepare`)"),
    encoder_dir: str = typer.Option(..., "--encoder-dir", help="encoder folder (from `bertrs finetune`) or a spec"),
    name: str = typer.Option(..., "--name", help="encoder name recorded in the cache (a key of params `encoders`)"),
    out: Path = typer.Option(..., "--out", help="output folder for the embedding cache"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Encode all reviews, build training-only user/item profiles and the item index, with provenance."""
    all_params = read_params(params)
    config = all_params.embed
    spec = all_params.encoders.get(name)
    if spec is not None and spec.pooling is not None:
        config = dataclasses.replace(config, pooling=spec.pooling)  # a per-encoder choice beats the default
    set_threads(config.threads)
    resolved = resolve_encoder(encoder_dir)
    source_file = Path(resolved) / SOURCE_FILE
    source = read_json(source_file) if source_file.is_file() else {"base": encoder_dir}
    encoder = load_encoder(resolved, pooling=config.pooling, max_length=config.max_length,
                           batch_size=config.batch_size, backend=config.backend)
    meta = {
        "encoder": name,
        "encoder_path": str(encoder_dir),
        "source_model": source.get("base"),
        "finetuned": source.get("finetuned"),
        "weights_fingerprint": weights_fingerprint(resolved),
        "pooling": config.pooling,
        "max_length": encoder.max_length,
        "dim": encoder.dim,
        "backend": config.backend,
        "data_fingerprint": read_json(prepared / STATS_FILE)["fingerprint"],
        "profile": config.profile,
    }
    final = cache.write_embedding_cache(
        out,
        prepared / FILES["reviews"][0],
        encoder,
        meta=meta,
        n_users=_rows(prepared / FILES["users"][0]),
        n_items=_rows(prepared / FILES["items"][0]),
        shard_size=config.shard_size,
        normalize_profiles=config.normalize_profiles,
        index_metric=config.index_metric,
    )
    typer.echo(f"cache {name} -> {out}: {final['n_reviews']} reviews, dim {final['dim']}, pooling {final['pooling']}")


@user_errors
def cache_info(path: Path = typer.Argument(..., help="embedding cache folder")) -> None:
    """Print a cache's provenance (encoder, weights fingerprint, pooling, data fingerprint, versions) and sizes."""
    typer.echo(json.dumps(cache.cache_info(path), indent=2, default=str))
