"""`bertrs recommend`: top-K new items for one user (printed with score parts) or many users (Parquet).

    bertrs recommend --prepared data/prepared --model-dir data/models/bert_rs --user A2XYZ --k 10
    bertrs recommend --prepared data/prepared --model-dir data/models/bert_rs --all-users --out recs.parquet
    bertrs recommend ... --users-file users.txt --out recs.parquet      (one raw user id per line)

Text models retrieve candidates from the FAISS index of the cache recorded in the checkpoint (`--embeddings`
overrides the folder; its fingerprint must still match), plus popular items; other models rank every item. The
cache and the prepared data are found relative to the working folder or to the model folder's project, so the
command works from anywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from pipeline.config import ConfigError, RecommendConfig
from pipeline.data.prepared import load_prepared
from pipeline.io import DataError, write_table
from pipeline.ranking.recommend import check_k, read_index, recommend, resolve_prepared_path, user_indices
from pipeline.ranking.checkpoint import RUN_FILE, load_checkpoint, resolve_cache_path
from stages.common import DEFAULT_PARAMS, read_params, user_errors

log = logging.getLogger(__name__)

SERVING_PARAMS_OPTION = typer.Option(
    None, "--params", help="params.yaml to read the recommend section from [default: ./params.yaml where there is "
    "one, else the section's defaults]")


def recommend_settings(params: Path | None) -> RecommendConfig:
    """The recommend section for `recommend` and `serve`, which run from any folder a model folder is served from:
    the file `--params` names (missing: the usual error), else ./params.yaml where there is one, else the defaults.
    A mistyped --params is an error, never a silent fall back to the defaults."""
    if params is None:
        return read_params(DEFAULT_PARAMS).recommend if DEFAULT_PARAMS.is_file() else RecommendConfig()
    return read_params(params).recommend


@user_errors
def main(
    prepared: Optional[Path] = typer.Option(
        None, help="prepared-data folder [default: data/prepared, here or in the model folder's project]"),
    model_dir: Path = typer.Option(..., help="a run folder written by `bertrs train`"),
    user: Optional[str] = typer.Option(None, help="raw user id (as in the reviews) to recommend for"),
    k: Optional[int] = typer.Option(None, help="list length [default: params recommend.k]"),
    all_users: bool = typer.Option(False, "--all-users", help="batch mode: every user"),
    users_file: Optional[Path] = typer.Option(None, help="batch mode: file with one raw user id per line"),
    out: Optional[Path] = typer.Option(None, help="Parquet output (batch mode)"),
    embeddings: Optional[Path] = typer.Option(None, help="override the cache folder recorded in the checkpoint"),
    params: Optional[Path] = SERVING_PARAMS_OPTION,
) -> None:
    """Recommend K items per user, never one the user already has, with each pick's score parts."""
    config = recommend_settings(params)
    k = check_k(config.k if k is None else k)
    modes = sum([user is not None, all_users, users_file is not None])
    if modes != 1:
        raise ConfigError("pass exactly one of --user, --all-users, --users-file")
    if user is None and out is None:
        raise ConfigError("--out: batch mode writes Parquet; give the output path")
    if not (model_dir / RUN_FILE).is_file():
        raise DataError(f"{model_dir}: not a model folder ({RUN_FILE} missing; has `bertrs train` finished?)")
    data = load_prepared(resolve_prepared_path(model_dir, "data/prepared", prepared))
    ckpt = load_checkpoint(model_dir, data, cache_path=embeddings)
    index = None
    if ckpt.profiles is not None:
        cache = resolve_cache_path(model_dir, ckpt.info["embeddings"]["path"], embeddings)
        try:
            index = read_index(cache)
        except DataError as error:
            log.warning("%s; ranking every item instead", error)
    if user is not None:
        users = user_indices(data, [user])
    elif all_users:
        users = user_indices(data, list(data.user_ids))
    else:
        if not users_file.is_file():
            raise DataError(f"{users_file}: users file not found")
        numbered = [(n, line.strip()) for n, line in enumerate(users_file.read_text().splitlines(), 1) if line.strip()]
        users = user_indices(data, [uid for _, uid in numbered], users_file, [n for n, _ in numbered])
    recs = recommend(
        ckpt.model, data, users, k, config.candidates, config.popular_fallback, ckpt.profiles, index
    )
    if out is not None:
        write_table(out, recs)
        typer.echo(f"{recs.num_rows} recommendations for {len(np.unique(users))} users -> {out}")
    if user is not None:
        typer.echo(format_recommendations(recs))


def format_recommendations(recs) -> str:
    """A plain-text table: rank, item, score and each score part."""
    parts = [c for c in recs.column_names if c.startswith("part_")]
    titled = "item_title" in recs.column_names and any(t for t in recs.column("item_title").to_pylist())
    header = ["rank", "item_id"] + (["title"] if titled else []) + ["score"] + [c.removeprefix("part_") for c in parts]
    rows = [header]
    for row in recs.to_pylist():
        title = [(row["item_title"] or "")[:40]] if titled else []
        rows.append([str(row["rank"]), str(row["item_id"])] + title + [f"{row['score']:.4f}"]
                    + [f"{row[c]:+.4f}" for c in parts])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(r, widths)) for r in rows)
