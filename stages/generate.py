"""`bertrs generate`: write a synthetic review dump (Amazon 2018 format) whose review text carries a signal.

    bertrs generate data/synthetic.json.gz --users 500 --items 200
    bertrs generate data/like.json.gz --like data/prepared --scale 2     # shaped like a real prepared set
    bertrs generate data/paper.json.gz --like data/prepared --shape 3764 17033 83186   # at another shape

With `--like`, user activity, item popularity and review lengths are resampled from the prepared set, reviews reuse
its real texts (`--text planted`: topic and filler words), the planted signals' knobs not given are fitted to its
next-review predictability (`--no-fit`: their defaults), and the measures of both sets go to `<out>.like.json`
(pipeline/data/likeness.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.data.likeness import SIGNAL_GRIDS, TEXT_KNOBS, TEXTS, LikeSpec, write_like
from pipeline.data.synthetic import SyntheticSpec, write_synthetic
from pipeline.io import DataError
from stages.common import user_errors


@user_errors
def main(
    out: Path = typer.Argument(..., help="gzipped JSON-lines file to write"),
    users: Optional[int] = typer.Option(None, help="number of users (default 200; with --like: use --scale)"),
    items: Optional[int] = typer.Option(None, help="number of items (default 100; with --like: use --scale)"),
    topics: Optional[int] = typer.Option(None, help="number of topics (default 8; with --like: fitted unless given)"),
    reviews_per_user: float = typer.Option(8.0, help="mean reviews per user (with --like: the real set's)"),
    copies: int = typer.Option(1, help="repeat the data with fresh ids (scale tests)"),
    like: Optional[Path] = typer.Option(None, "--like", help="a prepared-data folder whose shape to reproduce"),
    scale: Optional[float] = typer.Option(None, help="with --like: users and items as a multiple of the real set's "
                                                     "(default 1)"),
    shape: Optional[tuple[int, int, int]] = typer.Option(
        None, metavar="USERS ITEMS REVIEWS", help="with --like, instead of --scale: the users, items and reviews to "
                                                  "generate (before prepare's filters)"),
    topic_affinity: Optional[float] = typer.Option(
        None, help="share of a user's reviews about the user's preferred topics (default 0.85; with --like: fitted "
                   "unless given)"),
    text: str = typer.Option("real", help=f"with --like: where a review's words come from ({' or '.join(TEXTS)}: the "
                                          "real set's reviews, or topic and filler words)"),
    text_fidelity: Optional[float] = typer.Option(
        None, help="with --like and real text: share of reviews whose text is one of the item's donor's real reviews "
                   "(fitted unless given)"),
    topic_words: Optional[int] = typer.Option(None, help="with --like and planted text: topic words planted in each "
                                                         "review (fitted unless given)"),
    cooccurrence: Optional[float] = typer.Option(None, help="with --like: probability that a user's next item comes "
                                                            "from the neighbourhood of an item they reviewed (fitted "
                                                            "unless given)"),
    name_words: Optional[int] = typer.Option(None, help="with --like and planted text: words of the item's "
                                                        "neighbourhood's name planted in each review (fitted unless "
                                                        "given)"),
    fit: bool = typer.Option(True, help="with --like: fit the knobs not given to the prepared set (a few minutes on "
                                        "the bundled sample); --no-fit takes their defaults"),
    seed: int = typer.Option(0),
) -> None:
    """Generate a seeded dataset whose review words reflect each item's topic (planted words; with --like, the
    prepared set's own reviews by default)."""
    if text not in TEXTS:
        raise DataError(f"generate: --text must be one of {', '.join(TEXTS)} (got {text!r})")
    knobs = {"topics": topics, "topic_affinity": topic_affinity, "topic_words": topic_words,
             "cooccurrence": cooccurrence, "name_words": name_words, "text_fidelity": text_fidelity}
    if like is not None:
        if users is not None or items is not None or copies != 1:
            raise DataError("generate --like takes its size from the prepared set: use --scale or --shape, not "
                            "--users, --items or --copies")
        given = {knob: value for knob, value in knobs.items() if value is not None}
        sized = {"scale": scale} if scale is not None else {}
        spec = LikeSpec(shape=shape, seed=seed, text=text, **sized, **given)
        for other in (t for t in TEXTS if t != spec.text):
            unread = [f"--{knob.replace('_', '-')}" for knob in given if knob in TEXT_KNOBS[other]]
            if unread:
                raise DataError(f"generate --like --text {spec.text}: {', '.join(unread)} only apply with --text "
                                f"{other}")
        grid = {knob: values for knob, values in SIGNAL_GRIDS[spec.text].items() if knob not in given} if fit else None
        figures = write_like(like, out, spec, grid or None, progress=lambda message: typer.echo(message, err=True))
        settings = figures["settings"]
        fitted = "; fitted " + ", ".join(f"{knob} {settings[knob]}" for knob in grid) if grid else ""
        typer.echo(f"wrote {out} ({figures['generated']['reviews']} reviews shaped like {like}{fitted}); "
                   f"figures -> {out}.like.json")
        return
    like_only = {"--scale": scale, "--shape": shape, "--topic-words": topic_words, "--cooccurrence": cooccurrence,
                 "--name-words": name_words, "--text-fidelity": text_fidelity,
                 "--text": None if text == "real" else text, "--no-fit": None if fit else True}
    misplaced = [flag for flag, value in like_only.items() if value is not None]
    if misplaced:
        raise DataError(f"generate: {', '.join(misplaced)} only apply with --like")
    given = {name: value for name, value in (("n_topics", topics), ("topic_affinity", topic_affinity))
             if value is not None}  # the rest: SyntheticSpec's defaults
    spec = SyntheticSpec(n_users=users or 200, n_items=items or 100, reviews_per_user=reviews_per_user, seed=seed,
                         **given)
    write_synthetic(out, spec, copies=copies)
    typer.echo(f"wrote {out}")
