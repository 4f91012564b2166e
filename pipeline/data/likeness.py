"""A synthetic review set shaped like a real prepared one: `bertrs generate OUT --like data/prepared`.

Measured on the real set and reproduced by resampling: how many reviews each user wrote (user activity), how many
each item received (item popularity), and how many words each review has. Each generated user takes the review
count of a real user drawn at random, each generated item the popularity weight of a real item drawn at random, and
each review the length of a real review drawn at random. Topics then plant a text signal as in synthetic.py: items
belong to topics, a user prefers two, and a review's words mix its item's topic words with filler words.

Not fitted yet: the share of interactions explained by co-occurrence rather than by topic, and how strongly a
review's text predicts its item's neighbours. They stay the settings `topic_affinity` and `topic_words`, and the
figures file written beside the dump (`<out>.like.json`: the real set's measures, the generated set's, and what was
not fitted) says so.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.data.prepared import load_reviews
from pipeline.data.synthetic import FILLER_WORDS, TOPIC_WORDS
from pipeline.io import DataError, atomic_path, write_json

NOT_FITTED = (
    "share of interactions explained by co-occurrence versus by topic (set by topic_affinity)",
    "how strongly a review's text predicts its item's neighbours (set by topic_words)",
)
QUANTILES = {"p10": 10, "p25": 25, "median": 50, "p75": 75, "p90": 90, "p99": 99}


@dataclass(frozen=True)
class LikeSpec:
    """How the generated set departs from the real one it is shaped like.

    Attributes
    ----------
    scale : Users (and items) as a multiple of the real set's.
    topics : Topics the items are split into.
    topic_affinity : Share of a user's reviews about items of the user's two preferred topics.
    topic_words : Topic words planted in each review (the rest of its length is filler).
    seed : The generator's seed.
    """

    scale: float = 1.0
    topics: int = 8
    topic_affinity: float = 0.85
    topic_words: int = 6
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scale <= 0 or self.topics < 1 or not 0.0 <= self.topic_affinity <= 1.0 or self.topic_words < 0:
            raise DataError(f"generate --like: scale must be > 0, topics >= 1, topic_affinity in [0, 1] and "
                            f"topic_words >= 0 (got {asdict(self)})")


def distribution(values: np.ndarray) -> dict:
    """Mean, min, max and quantiles of a count."""
    values = np.asarray(values, dtype=np.float64)
    out = {"mean": round(float(values.mean()), 3), "min": int(values.min()), "max": int(values.max())}
    out.update({name: float(np.percentile(values, q)) for name, q in QUANTILES.items()})
    return out


def gini(counts: np.ndarray) -> float:
    """How unequal the counts are: 0 when equal, towards 1 when a few items take everything."""
    counts = np.sort(np.asarray(counts, dtype=np.float64))
    n = len(counts)
    return float((2 * np.arange(1, n + 1) - n - 1) @ counts / (n * counts.sum())) if n and counts.sum() else 0.0


def measure(users: np.ndarray, items: np.ndarray, words: np.ndarray) -> dict:
    """The shape of a review set: sizes, user activity, item popularity and review length.

    Parameters
    ----------
    users, items : Each review's user and item (any hashable codes).
    words : Each review's length in words.

    Returns
    -------
    {"users", "items", "reviews", "user_activity", "item_popularity", "item_popularity_gini", "review_words"}.
    """
    _, activity = np.unique(users, return_counts=True)
    _, popularity = np.unique(items, return_counts=True)
    return {"users": int(len(activity)), "items": int(len(popularity)), "reviews": int(len(users)),
            "user_activity": distribution(activity), "item_popularity": distribution(popularity),
            "item_popularity_gini": round(gini(popularity), 4), "review_words": distribution(words)}


def real_counts(prepared: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Per-user review counts, per-item review counts and per-review word counts of a prepared set, with its
    measures; every review counts, whatever its split (the shape of the data, not of a protocol)."""
    reviews = load_reviews(prepared, columns=["user_idx", "item_idx", "text"])  # names a missing file itself
    if reviews.num_rows == 0:
        raise DataError(f"generate --like {prepared}: the prepared data has no reviews")
    users, items = reviews.column("user_idx").to_numpy(), reviews.column("item_idx").to_numpy()
    words = np.array([len((text or "").split()) for text in reviews.column("text").to_pylist()])
    return (np.bincount(users)[np.unique(users)], np.bincount(items)[np.unique(items)], words,
            measure(users, items, words))


def like_records(counts: tuple[np.ndarray, np.ndarray, np.ndarray, dict], spec: LikeSpec) -> Iterator[dict]:
    """Yield Amazon 2018 records of a set shaped like the one `counts` (`real_counts`) describes (see the module
    docstring)."""
    activity, popularity, words, real = counts
    rng = np.random.default_rng(spec.seed)
    n_users = max(1, round(real["users"] * spec.scale))
    n_items = max(2, round(real["items"] * spec.scale))
    user_reviews = np.minimum(rng.choice(activity, size=n_users), n_items)
    weight = rng.choice(popularity, size=n_items).astype(np.float64)
    item_topic = rng.integers(0, spec.topics, size=n_items)
    pools = {t: np.flatnonzero(item_topic == t) for t in range(spec.topics)}
    everything = (np.arange(n_items), np.cumsum(weight))
    per_topic = max(3, len(TOPIC_WORDS) // spec.topics)
    for user in range(n_users):
        liked = rng.choice(spec.topics, size=min(2, spec.topics), replace=False)
        preferred = np.concatenate([pools[t] for t in liked])
        preferred = (preferred, np.cumsum(weight[preferred]))  # drawn from by popularity weight
        seen: set[int] = set()
        for k in range(int(user_reviews[user])):
            pool = preferred if len(preferred[0]) and rng.random() < spec.topic_affinity else everything
            item = _weighted_pick(rng, *pool, n_items, seen)
            seen.add(item)
            yield _record(rng, user, item, int(item_topic[item]), k, int(rng.choice(words)), per_topic, spec)


def _weighted_pick(rng: np.random.Generator, pool: np.ndarray, cumulative: np.ndarray, n_items: int,
                   seen: set[int]) -> int:
    """An item of `pool` drawn by popularity weight (`cumulative`: the running sum of the pool's weights), not one
    the user has reviewed (any unseen item once the pool is exhausted)."""
    for _ in range(8):
        item = int(pool[np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")])
        if item not in seen:
            return item
    unseen = np.setdiff1d(pool, list(seen))
    return int(rng.choice(unseen if len(unseen) else np.setdiff1d(np.arange(n_items), list(seen))))


def _record(rng, user: int, item: int, topic: int, k: int, length: int, per_topic: int, spec: LikeSpec) -> dict:
    start = (topic * per_topic) % len(TOPIC_WORDS)
    vocabulary = TOPIC_WORDS[start:start + per_topic]
    planted = min(spec.topic_words, length)
    text = list(rng.choice(vocabulary, size=planted)) + list(rng.choice(FILLER_WORDS, size=max(length - planted, 0)))
    rng.shuffle(text)
    return {"overall": float(rng.integers(3, 6)), "verified": True, "reviewTime": "",
            "reviewerID": f"L{user:07d}", "asin": f"J{item:07d}", "reviewerName": f"user {user}",
            "reviewText": " ".join(text), "summary": str(rng.choice(vocabulary)).capitalize(),
            "unixReviewTime": 1_400_000_000 + k * 86_400 * 7 + int(rng.integers(0, 86_400))}


def write_like(prepared: str | Path, out: str | Path, spec: LikeSpec) -> dict:
    """Write a gzipped JSON-lines dump shaped like `prepared`, and its figures beside it.

    Parameters
    ----------
    prepared : A prepared-data folder (`bertrs prepare`'s output).
    out : The dump to write (gzipped Amazon 2018 JSON lines).
    spec : How the generated set departs from the real one.

    Returns
    -------
    The figures written to `<out>.like.json`: the real set's measures, the generated set's (before any
    filtering by `prepare`), the settings, and what is not fitted.
    """
    out = Path(out)
    counts = real_counts(prepared)
    users, items, words = [], [], []
    with atomic_path(out) as tmp, gzip.open(tmp, "wt", encoding="utf-8") as handle:
        for record in like_records(counts, spec):
            users.append(record["reviewerID"])
            items.append(record["asin"])
            words.append(len(record["reviewText"].split()))
            handle.write(json.dumps(record) + "\n")
    figures = {"like": str(prepared), "settings": asdict(spec), "real": counts[3],
               "generated": measure(np.array(users), np.array(items), np.array(words)),
               "not_fitted": list(NOT_FITTED)}
    write_json(f"{out}.like.json", figures)
    return figures
