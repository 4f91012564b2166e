"""Build one embedding cache from a prepared-data folder and an encoder folder: the `embed` stage's library half.

Kept here rather than in `stages/embed.py` so that benchmarks and notebooks build caches exactly as the DAG does.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from pipeline.config import EmbedConfig
from pipeline.data.prepared import FILES, STATS_FILE
from pipeline.embeddings import cache
from pipeline.embeddings.index import IndexChoice
from pipeline.io import DataError, read_json
from pipeline.text.encode import load_encoder, set_threads
from pipeline.text.encoders import resolve_encoder, weights_fingerprint
from pipeline.text.finetune import SOURCE_FILE


def _rows(path: Path) -> int:
    if not path.is_file():
        raise DataError(f"{path}: file not found (has `bertrs prepare` run?)")
    return pq.ParquetFile(path).metadata.num_rows


def build_cache(prepared: str | Path, encoder_dir: str, name: str, config: EmbedConfig, out: str | Path) -> dict:
    """Encode every review of `prepared` with `encoder_dir` and write the cache to `out`; returns its meta."""
    prepared = Path(prepared)
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
    return cache.write_embedding_cache(
        out,
        prepared / FILES["reviews"][0],
        encoder,
        meta=meta,
        n_users=_rows(prepared / FILES["users"][0]),
        n_items=_rows(prepared / FILES["items"][0]),
        shard_size=config.shard_size,
        normalize_profiles=config.normalize_profiles,
        index_metric=config.index_metric,
        index_choice=IndexChoice(config.index_type, config.index_exact_below, config.index_nlist, config.index_nprobe,
                                 config.index_hnsw_m, config.index_ef_search),
    )
