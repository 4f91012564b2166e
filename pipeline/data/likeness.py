"""A synthetic review set shaped like a real prepared one: `bertrs generate OUT --like data/prepared`.

Resampled from the real set: how many reviews each user wrote (user activity), how many each item received (item
popularity), and the reviews' texts or lengths. Each generated user takes the review count of a real user drawn at
random, each generated item the popularity weight of a real item drawn at random, and each review a real review's
text (its length with it) or, with planted words, the length of a real review drawn at random.

Planted, with knobs fitted to the real set: items belong to `topics` topics and a user prefers two of them
(`topic_affinity`: the share of a user's reviews drawn from those topics); items also belong to small neighbourhoods
(an artist's albums, say), and a user's next item comes from the neighbourhood of an item they reviewed with
probability `cooccurrence`. With planted text a neighbourhood is drawn at random and named by planted words; with
real text it is the items whose donors' reviews read most alike (`_text_neighbourhoods`), as reviews of one artist's
albums name the artist.

A review's words come one of two ways (`text`):

- "real" (the default): the real set's own reviews. Its items are clustered into `topics` topics by their reviews'
  TF-IDF (k-means, seeded); each generated item of a topic takes one real item of that cluster as its donor, and a
  review's text is, with probability `text_fidelity`, one of its donor's real reviews, otherwise a real review drawn
  from the whole set. At a larger size the generated topics multiply with the items, each within one cluster
  (`generated_topics`). The text then speaks the real set's language, as an encoder reads it, and says as much about
  the item as the fit asks; a review's length is its real review's.
- "planted": `topic_words` words of its item's topic and `name_words` words of its neighbourhood's two-word name
  (what a review says about that one artist) mixed with filler words; a length drawn from the real set's. TF-IDF
  sees one planted word among a hundred, a mean-pooled encoder hardly does.

The knobs are fitted (`fit_signals`, over the text's grid in `SIGNAL_GRIDS`) on sets generated at the real set's own
size, to the real set's next-review predictability from popularity, co-occurrence and text and its text-neighbour
lift (pipeline/data/signals.py); `--scale`, or `--shape USERS ITEMS REVIEWS`, then applies them at the size asked for
(a shape stretches every resampled user activity by one factor, so that the reviews add up).

The figures file written beside the dump (`<out>.like.json`) holds the real set's measures, the generated set's,
the fitted knobs with every setting tried, and what is not fitted.
"""

from __future__ import annotations

import gzip
import json
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Iterator

import numpy as np
from scipy import sparse
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

from pipeline.data.prepared import load_reviews
from pipeline.data.signals import FITTED_MEASURES, TFIDF, signal_measures
from pipeline.data.synthetic import FILLER_WORDS, TOPIC_WORDS
from pipeline.io import DataError, atomic_path, write_json

NOT_FITTED = (
    "ratings (drawn uniformly from 3 to 5 stars)",
    "review times (one review a week per user, in the order drawn)",
)
TEXTS = ("real", "planted")
NEIGHBOURHOOD_KINDS = ("text", "random")  # LikeSpec.neighbourhoods, with real text
NOT_FITTED_BY_TEXT = {
    "real": ("vocabulary (the real set's reviews, each reused by every item its real item is donor to)",),
    "planted": ("vocabulary (topic words and filler words, not the real set's words)",),
}
NEIGHBOURHOOD = 10  # items per co-occurrence neighbourhood (at least, with real text)
NEAREST_CHUNK = 256  # real items whose text neighbours are ranked at once
NEAREST_ITEMS = 64  # real items a real item's text neighbours are drawn from, nearest first
# Real English words, none of them a topic or filler word: a neighbourhood's name is two of them (4,096 names).
NAME_WORDS = (
    "amber azure cobalt crimson golden ivory jade scarlet silver violet copper coral indigo olive ruby sapphire "
    "emerald falcon badger beaver cobra dolphin eagle ferret gazelle heron jaguar koala lemur lynx otter panther raven "
    "river canyon desert forest glacier harbor island meadow prairie valley summit tundra lagoon marsh orchard "
    "comet galaxy meteor nebula planet rocket orbit quasar lunar solar stellar cosmic aurora eclipse zenith horizon"
).split()
SIGNAL_GRIDS = {
    "real": {"topics": (8, 16, 32),
             "topic_affinity": (0.0, 0.25, 0.5, 0.7, 0.85, 0.95),
             "text_fidelity": (0.0, 0.25, 0.5, 0.75, 0.9, 1.0),
             "cooccurrence": (0.0, 0.1, 0.2, 0.35, 0.5, 0.7)},
    "planted": {"topics": (8, 16, 32),
                "topic_affinity": (0.0, 0.25, 0.5, 0.7, 0.85, 0.95),
                "topic_words": (0, 1, 2, 4, 6, 8, 16),
                "cooccurrence": (0.0, 0.1, 0.2, 0.35, 0.5, 0.7),
                "name_words": (0, 1, 2, 4, 8)},
}  # each text's knobs and the values the fit tries
TEXT_KNOBS = {text: tuple(knob for knob in grid if not all(knob in SIGNAL_GRIDS[t] for t in TEXTS))
              for text, grid in SIGNAL_GRIDS.items()}  # knobs only that text reads
FIT_SWEEPS = 2  # coordinate-descent passes over the knobs from each start (fewer when a pass changes nothing)
FIT_SEEDS = 2  # generator seeds each setting's measures are averaged over while fitting
ZERO = 0.01  # added to both sides of a measure's ratio in the fit's distance
QUANTILES = {"p10": 10, "p25": 25, "median": 50, "p75": 75, "p90": 90, "p99": 99}


@dataclass(frozen=True)
class LikeSpec:
    """How the generated set departs from the real one it is shaped like.

    Attributes
    ----------
    scale : Users (and items) as a multiple of the real set's.
    shape : (users, items, reviews) to generate instead of a scale (before `prepare` filters them): each user's
        resampled activity is stretched by one factor so that the reviews add up to about `reviews`.
    topics : Topics the items are split into.
    topic_affinity : Share of a user's reviews about items of the user's two preferred topics.
    cooccurrence : Probability that a user's next item comes from the neighbourhood of an item they reviewed.
    text : Where a review's words come from: "real" (the real set's reviews) or "planted" (see the module docstring).
    text_fidelity : With real text: the share of reviews whose text is one of the item's donor's real reviews (the
        rest take a real review drawn from the whole set).
    topic_words : With planted text: topic words planted in each review (the rest of its length is filler).
    name_words : With planted text: words of the item's neighbourhood's name planted in each review.
    neighbourhoods : With real text: "text" draws a co-occurrence neighbourhood as the items whose donors' reviews
        read alike (`_text_neighbourhoods`); "random" cuts the items into neighbourhoods at random, as planted text
        does, so that no review names them (the ablation of the text's naming).
    seed : The generator's seed.
    """

    scale: float = 1.0
    shape: tuple[int, int, int] | None = None
    topics: int = 8
    topic_affinity: float = 0.85
    topic_words: int = 6
    cooccurrence: float = 0.0
    name_words: int = 0
    text: str = "real"
    text_fidelity: float = 1.0
    neighbourhoods: str = "text"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.text not in TEXTS:
            raise DataError(f"generate --like: text must be one of {', '.join(TEXTS)} (got {self.text!r})")
        if self.neighbourhoods not in NEIGHBOURHOOD_KINDS:
            raise DataError(f"generate --like: neighbourhoods must be one of {', '.join(NEIGHBOURHOOD_KINDS)} (got "
                            f"{self.neighbourhoods!r})")
        if (self.scale <= 0 or self.topics < 1 or not 0.0 <= self.topic_affinity <= 1.0 or self.topic_words < 0
                or not 0.0 <= self.cooccurrence <= 1.0 or self.name_words < 0
                or not 0.0 <= self.text_fidelity <= 1.0):
            raise DataError(f"generate --like: scale must be > 0, topics >= 1, topic_affinity, cooccurrence and "
                            f"text_fidelity in [0, 1], topic_words and name_words >= 0 (got {asdict(self)})")
        if self.shape is not None and self.scale != 1.0:
            raise DataError(f"generate --like: give a scale or a shape, not both (got scale {self.scale}, shape "
                            f"{self.shape})")
        if self.shape is not None and (len(self.shape) != 3 or min(self.shape) < 1 or self.shape[1] < 2):
            raise DataError(f"generate --like: a shape is users >= 1, items >= 2 and reviews >= 1 (got {self.shape})")


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


@dataclass
class RealSet:
    """What the generator reads of a real prepared set.

    Attributes
    ----------
    activity : Each user's review count.
    popularity : Each item's review count.
    words : Each review's length in words.
    measures : The set's `measure`s.
    texts : Each review's text (every split: the shape of the data, not of a protocol).
    text_items : Each review's item, numbered 0.. in the order of `popularity`.
    """

    activity: np.ndarray
    popularity: np.ndarray
    words: np.ndarray
    measures: dict
    texts: list[str]
    text_items: np.ndarray
    _item_tfidf: sparse.csr_matrix | None = field(default=None, repr=False)
    _topics: dict = field(default_factory=dict, repr=False)  # topics() by topic count
    _nearest: np.ndarray | None = field(default=None, repr=False)  # nearest_items(), made once

    def item_vectors(self) -> sparse.csr_matrix:
        """Each real item's reviews' summed TF-IDF, normalised (the vectors `topics` clusters)."""
        if self._item_tfidf is None:
            vectoriser = TfidfVectorizer(**TFIDF, max_features=50_000)
            try:
                reviews = vectoriser.fit_transform(self.texts)
            except ValueError as error:  # sklearn: "empty vocabulary"
                raise DataError(f"generate --like: the real reviews share no word, so real text cannot be "
                                f"clustered into topics ({error}); use --text planted") from None
            n_items = len(self.popularity)
            summed = sparse.csr_matrix((np.ones(len(self.texts)), (self.text_items, np.arange(len(self.texts)))),
                                       shape=(n_items, len(self.texts)))
            self._item_tfidf = normalize(summed @ reviews)
        return self._item_tfidf

    def nearest_items(self) -> np.ndarray:
        """Each real item's NEAREST_ITEMS real items whose reviews read most like its own (`item_vectors` cosine):
        itself first, then nearest first, equal cosines in a fixed random order of each item's own (so that items
        with no word in common with any other do not all point at the same items). -> (real items x NEAREST_ITEMS)
        indices"""
        if self._nearest is None:
            vectors = self.item_vectors()
            n_items = vectors.shape[0]
            rows = []
            for start in range(0, n_items, NEAREST_CHUNK):
                similarity = (vectors[start:start + NEAREST_CHUNK] @ vectors.T).toarray()
                similarity[np.arange(len(similarity)), np.arange(start, start + len(similarity))] = np.inf
                tiebreak = np.random.default_rng(start).random(similarity.shape)  # fixed, its own for each item
                order = np.lexsort((tiebreak, -similarity), axis=-1)
                rows.append(order[:, :NEAREST_ITEMS])
            self._nearest = np.concatenate(rows)
        return self._nearest

    def topics(self, n_topics: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The real items clustered into `n_topics` topics by their reviews' summed TF-IDF (k-means with a fixed
        seed: the clusters are the real set's, whatever seed generates from them; a topic beyond the clusters
        k-means found, as when there are fewer items than topics, shares one). -> (each topic's real items, each
        real item's reviews)"""
        if n_topics not in self._topics:
            n_items = len(self.popularity)
            with warnings.catch_warnings():  # fewer distinct clusters than asked: handled below
                warnings.simplefilter("ignore", ConvergenceWarning)
                labels = (np.arange(n_items) if n_topics >= n_items else  # one item a topic
                          KMeans(n_topics, n_init=3, random_state=0).fit_predict(self.item_vectors()))
            clusters = [np.flatnonzero(labels == label) for label in np.unique(labels)]  # items with equal vectors
            order = np.argsort(self.text_items, kind="stable")  # (no shared word, say) can leave a cluster empty
            by_item = np.split(order, np.cumsum(np.bincount(self.text_items, minlength=n_items))[:-1])
            self._topics[n_topics] = ([clusters[t % len(clusters)] for t in range(n_topics)], by_item)
        return self._topics[n_topics]


def real_set(prepared: str | Path) -> RealSet:
    """Per-user and per-item review counts, review lengths and texts of a prepared set, with its measures; every
    review counts, whatever its split (the shape of the data, not of a protocol)."""
    reviews = load_reviews(prepared, columns=["user_idx", "item_idx", "text"])  # names a missing file itself
    if reviews.num_rows == 0:
        raise DataError(f"generate --like {prepared}: the prepared data has no reviews")
    users, items = reviews.column("user_idx").to_numpy(), reviews.column("item_idx").to_numpy()
    texts = [text or "" for text in reviews.column("text").to_pylist()]
    words = np.array([len(text.split()) for text in texts])
    item_codes, text_items = np.unique(items, return_inverse=True)
    return RealSet(np.bincount(users)[np.unique(users)], np.bincount(items)[item_codes], words,
                   measure(users, items, words), texts, text_items.ravel())


def prepared_signals(prepared: str | Path, seed: int = 0) -> dict:
    """The next-review predictability (pipeline/data/signals.py) of a prepared set, every review in time order."""
    reviews = load_reviews(prepared, columns=["user_idx", "item_idx", "text", "time"])
    return signal_measures(reviews.column("user_idx").to_numpy(), reviews.column("item_idx").to_numpy(),
                           reviews.column("text").to_pylist(), reviews.column("time").fill_null(0).to_numpy(),
                           seed=seed)


def like_records(real: RealSet, spec: LikeSpec) -> Iterator[dict]:
    """Yield Amazon 2018 records of a set shaped like `real` (see the module docstring)."""
    rng = np.random.default_rng(spec.seed)
    if spec.shape is None:
        n_users, n_items = max(1, round(real.measures["users"] * spec.scale)), max(2, round(real.measures["items"]
                                                                                          * spec.scale))
        user_reviews = np.minimum(rng.choice(real.activity, size=n_users), n_items)
    else:
        n_users, n_items, n_reviews = spec.shape
        drawn = rng.choice(real.activity, size=n_users).astype(np.float64)
        drawn *= n_reviews / drawn.sum()
        stretched = np.floor(drawn) + (rng.random(n_users) < drawn - np.floor(drawn))  # rounded without bias
        user_reviews = np.clip(stretched.astype(np.int64), 1, n_items)
    weight = rng.choice(real.popularity, size=n_items).astype(np.float64)
    n_topics = generated_topics(real, spec, n_items)
    item_topic = rng.integers(0, n_topics, size=n_items)
    pools = {t: np.flatnonzero(item_topic == t) for t in range(n_topics)}
    everything = (np.arange(n_items), np.cumsum(weight))
    named = spec.cooccurrence > 0 or (spec.text == "planted" and spec.name_words > 0)
    if spec.text == "real":
        topic_items, item_reviews = real.topics(spec.topics)  # a generated topic lies in one of these
        donor = np.array([rng.choice(topic_items[t % spec.topics]) for t in item_topic])
        write = _real_text_writer(rng, real, donor, item_reviews, spec.text_fidelity)
        if not named:
            neighbourhood, neighbours = None, None
        elif spec.neighbourhoods == "random":  # drawn apart from the main stream, which stays as with "text"
            neighbourhood, neighbours = _neighbourhoods(np.random.default_rng([spec.seed, 1]), weight)
        else:
            neighbourhood, neighbours = _text_neighbourhoods(real, donor, weight)
    else:
        neighbourhood, neighbours = _neighbourhoods(rng, weight) if named else (None, None)
        write = _planted_text_writer(rng, real, item_topic, neighbourhood if named else None, spec)
    for user in range(n_users):
        liked = rng.choice(n_topics, size=min(2, n_topics), replace=False)
        preferred = np.concatenate([pools[t] for t in liked])
        preferred = (preferred, np.cumsum(weight[preferred]))  # drawn from by popularity weight
        seen: list[int] = []
        seen_set: set[int] = set()
        for k in range(int(user_reviews[user])):
            if spec.cooccurrence > 0 and seen and rng.random() < spec.cooccurrence:
                pool = neighbours[neighbourhood[seen[int(rng.integers(len(seen)))]]]
            else:
                pool = preferred if len(preferred[0]) and rng.random() < spec.topic_affinity else everything
            item = _weighted_pick(rng, *pool, n_items, seen_set)
            seen.append(item)
            seen_set.add(item)
            text, summary = write(item)
            yield {"overall": float(rng.integers(3, 6)), "verified": True, "reviewTime": "",
                   "reviewerID": f"L{user:07d}", "asin": f"J{item:07d}", "reviewerName": f"user {user}",
                   "reviewText": text, "summary": summary(),
                   "unixReviewTime": 1_400_000_000 + k * 86_400 * 7 + int(rng.integers(0, 86_400))}


def generated_topics(real: RealSet, spec: LikeSpec, n_items: int) -> int:
    """How many topics `n_items` generated items fall into: `spec.topics` up to the real set's size; with real text,
    beyond it, more in proportion to the items, up to one per real item: a topic keeps the number of items it has
    at the real set's size (as a planted co-occurrence neighbourhood keeps its NEIGHBOURHOOD items), so that a larger
    catalogue does not make every next item a draw from thousands. Each generated topic lies within one of the
    real set's `spec.topics` text clusters, whose real items are its items' donors: the text says which cluster, as
    at the real set's size, and the finer topics are taste the text does not name. Planted text keeps
    `spec.topics`: its vocabulary has words for a few dozen topics."""
    if spec.text != "real" or n_items <= real.measures["items"]:
        return spec.topics
    return max(spec.topics, min(len(real.popularity), round(spec.topics * n_items / real.measures["items"])))


def _real_text_writer(rng: np.random.Generator, real: RealSet, donor: np.ndarray, item_reviews: list[np.ndarray],
                      fidelity: float):
    """item -> (text, summary drawer): one of the item's donor's real reviews with probability `fidelity`, otherwise
    any real review (its summary is in the prepared text already)."""

    def write(item: int):
        own = item_reviews[donor[item]]
        pick = own[rng.integers(len(own))] if rng.random() < fidelity else rng.integers(len(real.texts))
        return real.texts[int(pick)], str

    return write


def _planted_text_writer(rng: np.random.Generator, real: RealSet, item_topic: np.ndarray,
                         neighbourhood: np.ndarray | None, spec: LikeSpec):
    """item -> (text, summary drawer): planted topic and name words mixed with filler, at a length drawn from the
    real set's; the summary, a topic word, is drawn after the rating (the order the generator has always drawn
    in, so that a seed writes the same set as before real text came)."""
    per_topic = max(3, len(TOPIC_WORDS) // spec.topics)

    def write(item: int):
        start = (int(item_topic[item]) * per_topic) % len(TOPIC_WORDS)
        vocabulary = TOPIC_WORDS[start:start + per_topic]
        length = int(rng.choice(real.words))
        name = _name(int(neighbourhood[item])) if neighbourhood is not None else ()
        planted = min(spec.topic_words, length)
        named = min(spec.name_words, length - planted) if name else 0
        text = (list(rng.choice(vocabulary, size=planted)) + (list(rng.choice(name, size=named)) if named else [])
                + list(rng.choice(FILLER_WORDS, size=max(length - planted - named, 0))))
        rng.shuffle(text)
        return " ".join(text), lambda: str(rng.choice(vocabulary)).capitalize()

    return write


def _neighbourhoods(rng: np.random.Generator, weight: np.ndarray) -> tuple[np.ndarray, list]:
    """Items cut at random into neighbourhoods of NEIGHBOURHOOD items, unrelated to topic. -> (each item's
    neighbourhood, each neighbourhood's (items, running sum of their popularity weights))"""
    order = rng.permutation(len(weight))
    neighbourhood = np.empty(len(weight), dtype=np.int64)
    neighbourhood[order] = np.arange(len(weight)) // NEIGHBOURHOOD
    members = [order[start:start + NEIGHBOURHOOD] for start in range(0, len(order), NEIGHBOURHOOD)]
    return neighbourhood, [(group, np.cumsum(weight[group])) for group in members]


def _text_neighbourhoods(real: RealSet, donor: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, dict]:
    """Neighbourhoods that the real text names, as reviews of one artist's albums name the artist. A generated item
    whose donor gives its reviews to NEIGHBOURHOOD items or fewer has for neighbourhood those items and then the
    items of the real items whose reviews read most like its donor's (`RealSet.nearest_items`, nearest first), until
    it holds NEIGHBOURHOOD items or more (fewer only where its NEAREST_ITEMS nearest real items give to fewer). A donor
    that gives to more, as at a size beyond the real set's, has its items cut into neighbourhoods of NEIGHBOURHOOD
    or a few more (in item order, which nothing else follows), so that a neighbourhood keeps its size as a topic
    does (`generated_topics`); the text then names the donor, shared by its few neighbourhoods. -> (each item's
    neighbourhood, each neighbourhood's (items, running sum of their popularity weights))"""
    nearest = real.nearest_items()
    sizes = np.bincount(donor, minlength=len(real.popularity))
    members = np.split(np.argsort(donor, kind="stable"), np.cumsum(sizes)[:-1])
    neighbourhood = donor.copy()  # a small donor's items share one neighbourhood, numbered as the donor
    neighbours = {}
    for own in np.flatnonzero(sizes):
        if sizes[own] > NEIGHBOURHOOD:
            for part in np.array_split(members[own], sizes[own] // NEIGHBOURHOOD):
                key = len(real.popularity) + len(neighbours)  # beyond every donor's number
                neighbourhood[part] = key
                neighbours[key] = (part, np.cumsum(weight[part]))
            continue
        ranked = nearest[own]
        enough = int(np.searchsorted(np.cumsum(sizes[ranked]), NEIGHBOURHOOD)) + 1
        pool = np.concatenate([members[r] for r in ranked[:enough]])
        neighbours[int(own)] = (pool, np.cumsum(weight[pool]))
    return neighbourhood, neighbours


def _name(neighbourhood: int) -> tuple[str, str]:
    """A neighbourhood's two-word name."""
    first = neighbourhood % len(NAME_WORDS)  # the second word differs too, below 64 neighbourhoods as above
    return NAME_WORDS[first], NAME_WORDS[(neighbourhood // len(NAME_WORDS) + 37 * first + 11) % len(NAME_WORDS)]


def generated_signals(real: RealSet, spec: LikeSpec) -> dict:
    """The next-review predictability (pipeline/data/signals.py) of the set `like_records` generates."""
    return _records_signals(list(like_records(real, spec)), spec.seed)


def _records_signals(records: list[dict], seed: int) -> dict:
    """`signal_measures` of generated records."""
    return signal_measures(np.array([r["reviewerID"] for r in records]), np.array([r["asin"] for r in records]),
                           [r["reviewText"] for r in records], np.array([r["unixReviewTime"] for r in records]),
                           seed=seed)


def signal_distance(generated: dict, real: dict) -> float:
    """How far a generated set's fitted measures are from the real set's: the sum of |log| of their ratios."""
    return round(float(sum(abs(np.log((generated[m] + ZERO) / (real[m] + ZERO))) for m in FITTED_MEASURES)), 4)


def check_knobs(knobs, text: str) -> None:
    """Refuse knobs that the generator does not have, or that `text` does not read (DataError naming them)."""
    every = {f.name for f in fields(LikeSpec)} - {"scale", "shape", "text", "seed"}
    unknown = sorted(set(knobs) - every)
    if unknown:
        raise DataError(f"generate --like: no knob named {', '.join(unknown)} (the knobs: {', '.join(sorted(every))})")
    other = {t: sorted(set(knobs) & set(TEXT_KNOBS[t])) for t in TEXTS if t != text}
    for other_text, unread in other.items():
        if unread:
            raise DataError(f"generate --like: {', '.join(unread)} only apply with text {other_text}, not {text}")


def fit_signals(real: RealSet, real_signals: dict, spec: LikeSpec, grid: dict[str, tuple] | None = None,
                progress=None) -> tuple[LikeSpec, list[dict]]:
    """Fit the knobs named in `grid` so that a set generated at the real set's own size has the real set's
    measures (`signal_distance`), by coordinate descent: each knob in turn takes its grid value closest to the
    real set with the others held, for FIT_SWEEPS passes or until a pass changes nothing. The descent starts twice,
    from `spec` and from the grid's first corner (no planted signal), and the closer end wins. Each setting's
    measures are the mean over FIT_SEEDS generator seeds after `spec.seed`, so the seed `spec` writes with is one
    the fit never saw (`write_like` reports the distance at it).

    Parameters
    ----------
    real : The real set (`real_set`).
    real_signals : The real set's measures (`signal_measures`).
    spec : The starting point; its scale or shape is ignored while fitting and kept in the result.
    grid : Each knob's candidate values; None: SIGNAL_GRIDS[spec.text].
    progress : Called with a message after each setting is measured.

    Returns
    -------
    (the fitted spec, every setting tried with its measures and distance, in the order tried).
    """
    grid = SIGNAL_GRIDS[spec.text] if grid is None else grid
    check_knobs(grid, spec.text)
    current = replace(spec, scale=1.0, shape=None, **{knob: values[0] for knob, values in grid.items()
                                          if getattr(spec, knob) not in values})
    tried: dict[tuple, dict] = {}

    def distance(candidate: LikeSpec) -> float:
        key = tuple(getattr(candidate, knob) for knob in grid)
        if key not in tried:
            runs = [generated_signals(real, replace(candidate, seed=spec.seed + 1 + k)) for k in range(FIT_SEEDS)]
            measured = {m: round(float(np.mean([run[m] for run in runs])), 4) for m in runs[0]}
            tried[key] = {**dict(zip(grid, key)), **measured, "distance": signal_distance(measured, real_signals)}
            if progress:
                progress(f"fit {len(tried)}: {dict(zip(grid, key))} distance {tried[key]['distance']}")
        return tried[key]["distance"]

    ends = []
    for start in (current, replace(current, **{knob: values[0] for knob, values in grid.items()})):
        for _ in range(FIT_SWEEPS):
            before = start
            for knob, values in grid.items():
                start = min((replace(start, **{knob: value}) for value in values), key=distance)
            if start == before:
                break
        ends.append(start)
    return replace(min(ends, key=distance), scale=spec.scale, shape=spec.shape, seed=spec.seed), list(tried.values())


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


def write_like(prepared: str | Path, out: str | Path, spec: LikeSpec, grid: dict[str, tuple] | None | str = "all",
               progress=None) -> dict:
    """Write a gzipped JSON-lines dump shaped like `prepared`, and its figures beside it.

    Parameters
    ----------
    prepared : A prepared-data folder (`bertrs prepare`'s output).
    out : The dump to write (gzipped Amazon 2018 JSON lines).
    spec : How the generated set departs from the real one.
    grid : The knobs to fit to the real set first and their candidate values (`fit_signals`); "all": every knob of
        the spec's text (SIGNAL_GRIDS); None: the spec's values as given.
    progress : Called with a message after each setting the fit measures.

    Returns
    -------
    The figures written to `<out>.like.json`: the real set's measures, the generated set's (before any
    filtering by `prepare`), the settings, the fit (every setting tried, the best distance while fitting and the
    distance at the written seed, at the real set's size), and what is not fitted.
    """
    out = Path(out)
    grid = SIGNAL_GRIDS[spec.text] if grid == "all" else grid
    check_knobs(grid or {}, spec.text)
    real = real_set(prepared)
    real_signals = prepared_signals(prepared, spec.seed)
    fitted = fit_signals(real, real_signals, spec, grid, progress) if grid else None
    if fitted:
        spec = fitted[0]
    records = list(like_records(real, spec))
    with atomic_path(out) as tmp, gzip.open(tmp, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)
    generated = measure(np.array([r["reviewerID"] for r in records]), np.array([r["asin"] for r in records]),
                        np.array([len(r["reviewText"].split()) for r in records]))
    generated["signals"] = _records_signals(records, spec.seed)
    real_size = spec.shape is None and spec.scale == 1.0
    at_real_size = generated["signals"] if real_size or not fitted else generated_signals(
        real, replace(spec, scale=1.0, shape=None))
    settings = {knob: value for knob, value in asdict(spec).items()
                if not any(knob in TEXT_KNOBS[t] for t in TEXTS if t != spec.text)}  # what this text reads
    figures = {"like": str(prepared), "settings": settings, "real": {**real.measures, "signals": real_signals},
               "generated": generated,
               "fit": {"knobs": list(grid), "measures": list(FITTED_MEASURES), "seeds_per_setting": FIT_SEEDS,
                       "distance_while_fitting": min(t["distance"] for t in fitted[1]),
                       "distance_at_unseen_seed": signal_distance(at_real_size, real_signals), "tried": fitted[1]}
               if fitted else None,
               "not_fitted": list(NOT_FITTED) + list(NOT_FITTED_BY_TEXT[spec.text])
               + [f"{knob} (given)" for knob in SIGNAL_GRIDS[spec.text] if not fitted or knob not in grid]}
    write_json(f"{out}.like.json", figures)
    return figures
