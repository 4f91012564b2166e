"""`bertrs prepare`: raw review dumps -> train/valid/test interactions, evaluation candidates, id maps.

    bertrs prepare --input data/sample --out data/prepared --params params.yaml
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import typer

from pipeline.data.prepare import prepare_dataset
from stages.common import PARAMS_OPTION, read_params, user_errors


@user_errors
def main(
    input: Optional[list[Path]] = typer.Option(None, "--input",
                                               help="review file or folder (repeatable); default: prepare.input"),
    out: Path = typer.Option(Path("data/prepared"), "--out", help="output folder, replaced atomically"),
    params: Path = PARAMS_OPTION,
    strict: Optional[bool] = typer.Option(None, "--strict/--lenient", help="stop at the first bad record"),
) -> None:
    """Read, deduplicate, filter, sample and split reviews; sample evaluation candidates."""
    config = read_params(params).prepare
    if strict is not None:
        config = dataclasses.replace(config, strict=strict)
    inputs = list(input) if input else config.input
    if not inputs:
        raise typer.BadParameter("no input: pass --input or set prepare.input in params.yaml")
    stats = prepare_dataset(config, inputs, out)
    table1 = stats["table1"]
    typer.echo(
        f"prepared {table1['reviews']} reviews, {table1['users']} users, {table1['items']} items "
        f"(sparsity {table1['sparsity']:.4f}), splits {stats['splits']} -> {out}"
    )
    if stats["dropped"]["bad_records"]:
        typer.echo(f"skipped bad records: {json.dumps(stats['dropped']['bad_records'])}; first: "
                   + "; ".join(stats["bad_record_examples"][:3]), err=True)
