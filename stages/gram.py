"""`bertrs gram`: decompose the training pairs' Gram once, for every dense closed-form run to search from.

    bertrs gram --prepared data/prepared --out data/gram --params params.yaml

Writes data/gram/ (pipeline/ranking/shared/gram.py): the eigendecomposition of X^T X over the training pairs and
meta.json. `bertrs train --gram data/gram` then starts the searches of dense bert_rs and of ease with a lambda grid
from it instead of each taking its own (the n_items^3 step). Past `train.memory_budget_gb` the folder holds meta.json
alone, saying why.
"""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.data.prepared import load_prepared
from pipeline.ranking.shared.gram import write_shared_gram
from stages.common import PARAMS_OPTION, read_params, user_errors


@user_errors
def main(
    prepared: Path = typer.Option(Path("data/prepared"), help="prepared-data folder (`bertrs prepare`)"),
    out: Path = typer.Option(Path("data/gram"), help="output folder"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Decompose the training Gram once for every dense closed-form run (ease's grid, dense bert_rs)."""
    budget = read_params(params).ranking.train.memory_budget_gb
    meta = write_shared_gram(load_prepared(prepared), out, budget)
    done = "decomposed" if meta["eigen"] else f"not decomposed: {meta['skipped']}"
    typer.echo(f"training Gram over {meta['n_items']} items {done} -> {out}")
