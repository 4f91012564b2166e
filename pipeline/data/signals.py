"""How predictable each user's next review is, and from what: popularity, co-occurrence, or review text.

Measured the same way on a real prepared set and on a generated one (`bertrs generate --like`), without an encoder,
so that the generator's knobs can be fitted to the real set. Each user with two or more reviews has their last
review (by time; equal times in a seeded random order) held out; the rest is the history every signal reads, and a
held-out item already in its user's history is not a target:

- popularity: items ranked by how many histories hold them;
- co-occurrence: items ranked by the summed cosine co-occurrence (X^T X normalised by the items' counts) with the
  user's history items, as an item-kNN recommender does;
- text: items ranked by the TF-IDF cosine between the user's history reviews and the item's history reviews.

A hit rate is the expected share of held-out items in the top `TOP_K` of the items outside the user's history
(items tied with the target share the places they span at random).

Averaged TF-IDF vectors also carry popularity: an item with many reviews has a dense, near-average vector, close to
every other, and co-reviewed items are mostly popular ones. So each text measure is read against a baseline that
keeps popularity and loses the text:

- text hit lift: the text hit rate over the text hit rate with the history's review texts shuffled across reviews
  (seeded: every item keeps its review count, its words say nothing about it);
- text-neighbour lift: the mean TF-IDF cosine of item pairs reviewed by the same user (weighted by how many users
  share them) over that of random pairs of distinct items drawn in proportion to how often each item is in such a
  pair (`RANDOM_PAIRS` of them, seeded).
- text lift over co-occurrence: the hit rate of co-occurrence and text together (each user's two score rows scaled
  to their maximum over the items outside the user's history, and added) over that of co-occurrence and the
  shuffled text together: how the text changes what the co-occurrence of the histories finds.

The shuffled baseline keeps the popularity that averaged vectors carry and nothing else, so a lift reads below 1
where text says nothing about the next item and less about popularity than its shuffle does: the lifts are
measures to match between a real set and its twin, not tests of whether text helps.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

from pipeline.io import DataError

TOP_K = 10
USER_CHUNK = 512  # users scored at once (a chunk x items dense block)
ZERO = 1e-3  # added to both rates of the text hit lift
RANDOM_PAIRS = 40_000  # pairs drawn for the text-neighbour lift's baseline
PAIR_CHUNK = 20_000  # item pairs whose cosines are computed at once
TFIDF = {"sublinear_tf": True, "min_df": 2, "token_pattern": r"(?u)\b[^\W\d_]{2,}\b"}  # words of 2+ letters
FITTED_MEASURES = ("popularity_hit_rate", "cooccurrence_hit_rate", "text_hit_lift", "text_neighbour_lift",
                   "text_over_cooccurrence_lift")


def signal_measures(users: np.ndarray, items: np.ndarray, texts: list[str], order: np.ndarray,
                    seed: int = 0) -> dict:
    """The next-review predictability of a review set (see the module docstring).

    Parameters
    ----------
    users, items : Each review's user and item (any codes that `np.unique` sorts).
    texts : Each review's text.
    order : Each review's time; a user's last review in this order is held out.
    seed : Seeds the order of equal times and the shuffled texts.

    Returns
    -------
    {"held_out_users", "popularity_hit_rate", "cooccurrence_hit_rate", "text_hit_rate", "text_hit_rate_shuffled",
    "text_hit_lift", "text_neighbour_lift", "cooccurrence_text_hit_rate", "cooccurrence_text_hit_rate_shuffled",
    "text_over_cooccurrence_lift"}.

    Raises
    ------
    DataError : No reviews, or no word in two or more history reviews (nothing for TF-IDF to compare).
    """
    if len(users) == 0:
        raise DataError("next-review measures: the review set is empty")
    rng = np.random.default_rng(seed)
    user_index = np.unique(users, return_inverse=True)[1].ravel()
    item_codes, item_index = np.unique(items, return_inverse=True)
    item_index = item_index.ravel()
    n_users, n_items = int(user_index.max()) + 1, len(item_codes)
    held = last_of_each_user(user_index, np.asarray(order), rng)
    history = ~held
    x = sparse.csr_matrix((np.ones(int(history.sum())), (user_index[history], item_index[history])),
                          shape=(n_users, n_items))
    x.data[:] = 1.0  # a repeated pair counts once
    target_users, target_items = user_index[held], item_index[held]
    new = np.asarray(x[target_users, target_items]).ravel() == 0  # a repeat of a history item is no target
    target_users, target_items = target_users[new], target_items[new]

    counts = np.asarray(x.sum(axis=0)).ravel()
    gram = (x.T @ x).tocsr()
    gram.setdiag(0.0)
    gram.eliminate_zeros()
    inverse_root = sparse.diags(1.0 / np.sqrt(np.maximum(counts, 1.0)))
    cooccurrence = (inverse_root @ gram @ inverse_root).tocsr()

    history_rows = np.flatnonzero(history)
    vectoriser = TfidfVectorizer(**TFIDF)
    try:
        reviews = vectoriser.fit_transform([texts[i] or "" for i in history_rows])
    except ValueError as error:  # sklearn: "empty vocabulary"
        raise DataError(f"next-review measures: no word appears in two or more history reviews ({error})") from None
    shuffled = reviews[rng.permutation(reviews.shape[0])]
    texts_by = {}
    for name, matrix in (("true", reviews), ("shuffled", shuffled)):
        by_item = _rows_summed(item_index[history_rows], n_items) @ matrix
        by_user = _rows_summed(user_index[history_rows], n_users) @ matrix
        texts_by[name] = (normalize(by_user), normalize(by_item))

    def text_rate(name: str) -> float:
        user_text, item_text = texts_by[name]
        return _hit_rate(lambda rows: (user_text[rows] @ item_text.T).toarray(), x, target_users, target_items)

    text_hit_rate, shuffled_rate = text_rate("true"), text_rate("shuffled")

    def with_cooccurrence_rate(name: str) -> float:
        user_text, item_text = texts_by[name]

        def together(rows: np.ndarray) -> np.ndarray:
            seen = x[rows]
            return (_scaled_unseen((seen @ cooccurrence).toarray(), seen)
                    + _scaled_unseen((user_text[rows] @ item_text.T).toarray(), seen))

        return _hit_rate(together, x, target_users, target_items)

    together, together_shuffled = with_cooccurrence_rate("true"), with_cooccurrence_rate("shuffled")
    pairs = sparse.triu(gram, k=1).tocoo()
    return {
        "held_out_users": int(len(target_users)),
        "popularity_hit_rate": _hit_rate(lambda rows: np.tile(counts, (len(rows), 1)), x, target_users,
                                         target_items),
        "cooccurrence_hit_rate": _hit_rate(lambda rows: (x[rows] @ cooccurrence).toarray(), x, target_users,
                                           target_items),
        "text_hit_rate": text_hit_rate,
        "text_hit_rate_shuffled": shuffled_rate,
        "text_hit_lift": round((text_hit_rate + ZERO) / (shuffled_rate + ZERO), 4),
        "text_neighbour_lift": _neighbour_lift(pairs, texts_by["true"][1], rng),
        "cooccurrence_text_hit_rate": together,
        "cooccurrence_text_hit_rate_shuffled": together_shuffled,
        "text_over_cooccurrence_lift": round((together + ZERO) / (together_shuffled + ZERO), 4),
    }


def last_of_each_user(user_index: np.ndarray, order: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A mask of each user's last review in `order` (equal times in a random order drawn from `rng`), for users
    with two or more reviews."""
    by_time = np.lexsort((rng.permutation(len(order)), order, user_index))
    sorted_users = user_index[by_time]
    last = np.r_[sorted_users[1:] != sorted_users[:-1], True]
    first = np.r_[True, sorted_users[1:] != sorted_users[:-1]]
    held = np.zeros(len(order), dtype=bool)
    held[by_time[last & ~first]] = True
    return held


def _rows_summed(index: np.ndarray, n: int) -> sparse.csr_matrix:
    """The (n x len(index)) matrix that sums rows by `index`."""
    return sparse.csr_matrix((np.ones(len(index)), (index, np.arange(len(index)))), shape=(n, len(index)))


def _scaled_unseen(scores: np.ndarray, seen: sparse.csr_matrix) -> np.ndarray:
    """Each row divided by its largest value over the items outside the user's history (`seen`, whose own scores
    are left to `_hit_rate` to drop; a row with no positive score there is left as it is)."""
    seen = seen.tocoo()
    outside = scores.copy()
    outside[seen.row, seen.col] = 0.0
    top = outside.max(axis=1, keepdims=True)
    return scores / np.where(top > 0, top, 1.0)


def _hit_rate(score_rows, x: sparse.csr_matrix, target_users: np.ndarray, target_items: np.ndarray) -> float:
    """The expected share of targets in the top TOP_K of the items outside their user's history: a target with
    `above` items scored higher and `tied` others scored equal is at each of the tied places with equal chance."""
    if len(target_users) == 0:
        return 0.0
    hits = 0.0
    for start in range(0, len(target_users), USER_CHUNK):
        rows, wanted = target_users[start:start + USER_CHUNK], target_items[start:start + USER_CHUNK]
        scores = np.asarray(score_rows(rows), dtype=np.float64)
        seen = x[rows].tocoo()
        scores[seen.row, seen.col] = -np.inf
        target = scores[np.arange(len(rows)), wanted][:, None]
        above = (scores > target).sum(axis=1)
        tied = (scores == target).sum(axis=1) - 1
        hits += float(np.clip((TOP_K - above) / (tied + 1), 0.0, 1.0).sum())
    return round(hits / len(target_users), 4)


def _neighbour_lift(pairs: sparse.coo_matrix, item_text: sparse.csr_matrix, rng: np.random.Generator) -> float:
    """Mean cosine of the co-reviewed pairs (weighted by how many users share them) over that of random distinct
    pairs whose ends are drawn by each item's weighted share of the co-reviewed pairs."""
    if pairs.nnz == 0:
        return 1.0
    cosines = _pair_cosines(item_text, pairs.row, pairs.col)
    degree = np.bincount(pairs.row, pairs.data, item_text.shape[0]) + np.bincount(pairs.col, pairs.data,
                                                                                item_text.shape[0])
    left, right = (rng.choice(len(degree), size=RANDOM_PAIRS, p=degree / degree.sum()) for _ in range(2))
    distinct = left != right
    baseline = _pair_cosines(item_text, left[distinct], right[distinct])
    return round(float(np.average(cosines, weights=pairs.data)) / max(float(baseline.mean()), 1e-12), 4)


def _pair_cosines(item_text: sparse.csr_matrix, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The cosine of each (left, right) pair of L2-normalised rows, PAIR_CHUNK pairs at a time (a pair's two rows
    are copied out, which for a million pairs of real reviews' vocabularies would take tens of GB at once)."""
    return np.concatenate([np.asarray(item_text[left[start:start + PAIR_CHUNK]].multiply(
        item_text[right[start:start + PAIR_CHUNK]]).sum(axis=1)).ravel()
        for start in range(0, len(left), PAIR_CHUNK)] or [np.zeros(0)])
