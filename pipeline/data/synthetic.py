"""Seeded generator of review datasets in the Amazon 2018 format, with a planted text signal.

Items belong to topics, users prefer a few topics, and a review's words come from its item's topic, so review
text carries a real preference signal that a text model can exploit and a shuffled-profile ablation destroys.
Tests, the ranker's sanity checks and the scale benchmarks use it; it never replaces the real sample as input.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from pipeline.io import atomic_path

# Real English words, so that a real WordPiece tokenizer sees whole tokens; topics take disjoint slices.
TOPIC_WORDS = (
    "guitar piano violin drums melody chorus rhythm bass jazz blues opera concert "
    "novel chapter author plot character fiction poetry mystery romance thriller history biography "
    "lipstick shampoo lotion perfume mascara serum cream fragrance soap makeup nail skin "
    "camera lens battery charger screen cable laptop keyboard mouse speaker headphones tablet "
    "coffee tea chocolate cookie pasta sauce spice honey cereal snack bread cheese "
    "tent backpack hiking boots jacket compass lantern kayak fishing bicycle helmet rope "
    "puppy kitten leash collar aquarium bird hamster treats litter kennel toy bowl "
    "hammer drill wrench screwdriver saw ladder paint nails glue tape bolt clamp"
).split()
FILLER_WORDS = (
    "really quite very good great nice fine okay bought this it works well for me and the with was "
    "is my would again product item order arrived fast recommend love like use"
).split()


@dataclass(frozen=True)
class SyntheticSpec:
    """The shape of a generated review set (`generate_records`).

    Attributes
    ----------
    n_users, n_items : Users generated and the catalogue they review.
    n_topics : Topics the items are split into; each user prefers two of them (one where there is one).
    reviews_per_user : The mean of a user's Poisson-drawn review count.
    min_reviews : The fewest reviews a user gets (no user reviews more than `n_items` items).
    topic_affinity : Share of a user's reviews about items of the user's preferred topics.
    topic_words_per_review : Topic words per sentence are half of this (at least one); the rest is filler.
    popularity_tail : Pareto shape of item popularity: smaller is a longer tail.
    seed : The generator's seed.
    """

    n_users: int = 200
    n_items: int = 100
    n_topics: int = 8
    reviews_per_user: float = 8.0  # mean; each user gets at least `min_reviews`
    min_reviews: int = 4
    topic_affinity: float = 0.85  # share of a user's reviews about items of the user's preferred topics
    topic_words_per_review: int = 6
    # Pareto shape of item popularity: smaller is a longer tail (fewer items kept by k-core)
    popularity_tail: float = 1.5
    seed: int = 0


def generate_records(spec: SyntheticSpec, user_prefix: str = "U", item_prefix: str = "I") -> Iterator[dict]:
    """Yield Amazon 2018 records one at a time (constant memory in the number of reviews)."""
    rng = np.random.default_rng(spec.seed)
    words_per_topic = max(3, len(TOPIC_WORDS) // spec.n_topics)
    item_topic = rng.integers(0, spec.n_topics, size=spec.n_items)
    popularity = rng.pareto(spec.popularity_tail, size=spec.n_items) + 1.0  # long tail, as in real catalogues
    by_topic = [np.flatnonzero(item_topic == t) for t in range(spec.n_topics)]
    for user in range(spec.n_users):
        liked = rng.choice(spec.n_topics, size=min(2, spec.n_topics), replace=False)
        n_reviews = max(spec.min_reviews, int(rng.poisson(spec.reviews_per_user)))
        pool_liked = np.concatenate([by_topic[t] for t in liked])
        seen: set[int] = set()
        for k in range(min(n_reviews, spec.n_items)):
            pool = pool_liked if rng.random() < spec.topic_affinity and len(pool_liked) else np.arange(spec.n_items)
            weights = popularity[pool] / popularity[pool].sum()
            item = int(rng.choice(pool, p=weights))
            if item in seen:
                remaining = np.setdiff1d(np.arange(spec.n_items), list(seen))
                item = int(rng.choice(remaining))
            seen.add(item)
            yield _record(spec, rng, user, item, int(item_topic[item]), k, words_per_topic, user_prefix, item_prefix)


def _record(spec, rng, user, item, topic, k, words_per_topic, user_prefix, item_prefix) -> dict:
    start = (topic * words_per_topic) % len(TOPIC_WORDS)
    vocabulary = TOPIC_WORDS[start : start + words_per_topic]
    sentences = []
    for _ in range(int(rng.integers(2, 5))):
        words = list(rng.choice(vocabulary, size=max(1, spec.topic_words_per_review // 2)))
        words += list(rng.choice(FILLER_WORDS, size=4))
        rng.shuffle(words)
        sentences.append(" ".join(words).capitalize() + ".")
    time = 1_400_000_000 + k * 86_400 * 7 + int(rng.integers(0, 86_400))
    return {
        "overall": float(rng.integers(3, 6)),
        "verified": True,
        "reviewTime": "",
        "reviewerID": f"{user_prefix}{user:06d}",
        "asin": f"{item_prefix}{item:06d}",
        "reviewerName": f"user {user}",
        "reviewText": " ".join(sentences),
        "summary": str(rng.choice(vocabulary)).capitalize(),
        "unixReviewTime": time,
    }


def write_synthetic(path: str | Path, spec: SyntheticSpec, copies: int = 1) -> Path:
    """Write a gzipped JSON-lines file; `copies` > 1 repeats the data with fresh user and item ids (scale tests)."""
    path = Path(path)
    with atomic_path(path) as tmp, gzip.open(tmp, "wt", encoding="utf-8") as handle:
        for copy in range(copies):
            for record in generate_records(spec, user_prefix=f"U{copy}_", item_prefix=f"I{copy}_"):
                handle.write(json.dumps(record) + "\n")
    return path
