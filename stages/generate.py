"""`bertrs generate`: write a synthetic review dump (Amazon 2018 format) with a planted text signal.

    bertrs generate data/synthetic.json.gz --users 500 --items 200
    bertrs generate data/like.json.gz --like data/prepared --scale 2     # shaped like a real prepared set

With `--like`, user activity, item popularity and review lengths are resampled from the prepared set and the
measures of both sets go to `<out>.like.json` (pipeline/data/likeness.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.data.likeness import LikeSpec, write_like
from pipeline.data.synthetic import SyntheticSpec, write_synthetic
from pipeline.io import DataError
from stages.common import user_errors


@user_errors
def main(
    out: Path = typer.Argument(..., help="gzipped JSON-lines file to write"),
    users: Optional[int] = typer.Option(None, help="number of users (default 200; with --like: use --scale)"),
    items: Optional[int] = typer.Option(None, help="number of items (default 100; with --like: use --scale)"),
    topics: int = typer.Option(8, help="number of topics"),
    reviews_per_user: float = typer.Option(8.0, help="mean reviews per user (with --like: the real set's)"),
    copies: int = typer.Option(1, help="repeat the data with fresh ids (scale tests)"),
    like: Optional[Path] = typer.Option(None, "--like", help="a prepared-data folder whose shape to reproduce"),
    scale: float = typer.Option(1.0, help="with --like: users and items as a multiple of the real set's"),
    topic_affinity: float = typer.Option(0.85, help="share of a user's reviews about the user's preferred topics"),
    seed: int = typer.Option(0),
) -> None:
    """Generate a seeded dataset whose review words reflect each item's topic."""
    if like is not None:
        if users is not None or items is not None or copies != 1:
            raise DataError("generate --like takes its size from the prepared set: use --scale, not --users, "
                            "--items or --copies")
        figures = write_like(like, out, LikeSpec(scale=scale, topics=topics, topic_affinity=topic_affinity,
                                                 seed=seed))
        typer.echo(f"wrote {out} ({figures['generated']['reviews']} reviews shaped like {like}); "
                   f"figures -> {out}.like.json")
        return
    spec = SyntheticSpec(n_users=users or 200, n_items=items or 100, n_topics=topics,
                         reviews_per_user=reviews_per_user, topic_affinity=topic_affinity, seed=seed)
    write_synthetic(out, spec, copies=copies)
    typer.echo(f"wrote {out}")
