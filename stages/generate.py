"""`bertrs generate`: write a synthetic review dump (Amazon 2018 format) with a planted text signal.

    bertrs generate data/synthetic.json.gz --users 500 --items 200
    bertrs generate data/like.json.gz --like data/prepared --scale 2     # shaped like a real prepared set
    bertrs generate data/paper.json.gz --like data/prepared --shape 3764 17033 83186   # at another shape

With `--like`, user activity, item popularity and review lengths are resampled from the prepared set, the planted
signals' knobs are fitted to its next-review predictability (`--no-fit`: the knobs as given), and the measures of
both sets go to `<out>.like.json` (pipeline/data/likeness.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.data.likeness import SIGNAL_GRID, LikeSpec, write_like
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
    shape: Optional[tuple[int, int, int]] = typer.Option(
        None, metavar="USERS ITEMS REVIEWS", help="with --like, instead of --scale: the users, items and reviews to "
                                                  "generate (before prepare's filters)"),
    topic_affinity: float = typer.Option(0.85, help="share of a user's reviews about the user's preferred topics"),
    topic_words: int = typer.Option(6, help="with --like --no-fit: topic words planted in each review"),
    cooccurrence: float = typer.Option(0.0, help="with --like --no-fit: probability that a user's next item comes "
                                                 "from the neighbourhood of an item they reviewed"),
    name_words: int = typer.Option(0, help="with --like --no-fit: words of the item's neighbourhood's name planted "
                                           "in each review"),
    fit: bool = typer.Option(True, help="with --like: fit topics, topic affinity, topic words, co-occurrence and "
                                        "name words to the prepared set (about a minute on the bundled sample)"),
    seed: int = typer.Option(0),
) -> None:
    """Generate a seeded dataset whose review words reflect each item's topic."""
    if like is not None:
        if users is not None or items is not None or copies != 1:
            raise DataError("generate --like takes its size from the prepared set: use --scale, not --users, "
                            "--items or --copies")
        spec = LikeSpec(scale=scale, shape=shape, topics=topics, topic_affinity=topic_affinity, topic_words=topic_words,
                        cooccurrence=cooccurrence, name_words=name_words, seed=seed)
        figures = write_like(like, out, spec, SIGNAL_GRID if fit else None,
                             progress=lambda message: typer.echo(message, err=True))
        fitted = f"; fitted {figures['settings']}" if fit else ""
        typer.echo(f"wrote {out} ({figures['generated']['reviews']} reviews shaped like {like}{fitted}); "
                   f"figures -> {out}.like.json")
        return
    spec = SyntheticSpec(n_users=users or 200, n_items=items or 100, n_topics=topics,
                         reviews_per_user=reviews_per_user, topic_affinity=topic_affinity, seed=seed)
    write_synthetic(out, spec, copies=copies)
    typer.echo(f"wrote {out}")
