"""`bertrs generate`: write a synthetic review dump (Amazon 2018 format) with a planted text signal.

    bertrs generate data/synthetic.json.gz --users 500 --items 200
"""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.data.synthetic import SyntheticSpec, write_synthetic
from stages.common import user_errors


@user_errors
def main(
    out: Path = typer.Argument(..., help="gzipped JSON-lines file to write"),
    users: int = typer.Option(200, help="number of users"),
    items: int = typer.Option(100, help="number of items"),
    topics: int = typer.Option(8, help="number of topics"),
    reviews_per_user: float = typer.Option(8.0, help="mean reviews per user"),
    copies: int = typer.Option(1, help="repeat the data with fresh ids (scale tests)"),
    seed: int = typer.Option(0),
) -> None:
    """Generate a seeded dataset whose review words reflect each item's topic."""
    spec = SyntheticSpec(n_users=users, n_items=items, n_topics=topics, reviews_per_user=reviews_per_user, seed=seed)
    write_synthetic(out, spec, copies=copies)
    typer.echo(f"wrote {out}")
