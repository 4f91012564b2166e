"""How predictable each user's next review is, and from what: co-occurrence, review text or popularity alone.

Measured the same way on a real prepared set and on a generated one (`bertrs generate --like`), without an encoder,
so that the generator's knobs can be fitted to the real set. Each user with two or more reviews has their last
review (by time) held out; the rest is the history every signal reads:

- popularity: items ranked by how many histories hold them;
- co-occurrence: items ranked by the summed cosine co-occurrence (X^T X normalised by the items' counts) with the
  user's history items, as an item-kNN recommender does;
- text: items ranked by the TF-IDF cosine between the user's history reviews and the item's history reviews.

A hit rate is the share of held-out items ranked in the top `TOP_K` of the items outside the user's history (ties
take their mean position). The text-neighbour lift is how much closer in TF-IDF two items reviewed by the same user
are than two items drawn at random: 1 when text says nothing about an item's neighbours.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

TOP_K = 10
RANDOM_PAIRS = 20_000  # item pairs drawn at random for the lift's denominator
USER_CHUNK = 512  # users scored at once (a chunk x items dense block)
FITTED_MEASURES = ("popularity_hit_rate", "cooccurrence_hit_rate", "text_hit_rate", "text_neighbour_lift")


def signal_measures(users: np.ndarray, items: np.ndarray, texts: list[str], order: np.ndarray,
                    seed: int = 0) -> dict:
    """The next-review predictability of a review set (see the module docstring).

    Parameters
    ----------
    users, items : Each review's user and item (any codes that `np.unique` sorts).
    texts : Each review's text.
    order : Each review's time; a user's last review in this order is held out (ties: the later position).
    seed : Seeds the random item pairs of the lift.

    Returns
    -------
    {"held_out_users", "popularity_hit_rate", "cooccurrence_hit_rate", "text_hit_rate", "text_neighbour_lift"}.
    """
    user_index = np.unique(users, return_inverse=True)[1].ravel()
    item_codes, item_index = np.unique(items, return_inverse=True)
    item_index = item_index.ravel()
    n_users, n_items = int(user_index.max()) + 1, len(item_codes)
    held = _last_of_each_user(user_index, np.asarray(order))
    history = ~held
    x = sparse.csr_matrix((np.ones(int(history.sum())), (user_index[history], item_index[history])),
                          shape=(n_users, n_items))
    x.data[:] = 1.0  # a repeated pair counts once
    target_users, target_items = user_index[held], item_index[held]

    counts = np.asarray(x.sum(axis=0)).ravel()
    gram = (x.T @ x).tocsr()
    gram.setdiag(0.0)
    gram.eliminate_zeros()
    inverse_root = sparse.diags(1.0 / np.sqrt(np.maximum(counts, 1.0)))
    cooccurrence = (inverse_root @ gram @ inverse_root).tocsr()

    vectoriser = TfidfVectorizer(sublinear_tf=True, min_df=2, token_pattern=r"(?u)\b[^\W\d_]{2,}\b")
    history_rows = np.flatnonzero(history)
    reviews = vectoriser.fit_transform([texts[i] or "" for i in history_rows])
    by_item = sparse.csr_matrix((np.ones(len(history_rows)), (item_index[history_rows], np.arange(len(history_rows)))),
                                shape=(n_items, len(history_rows)))
    by_user = sparse.csr_matrix((np.ones(len(history_rows)), (user_index[history_rows], np.arange(len(history_rows)))),
                                shape=(n_users, len(history_rows)))
    item_text, user_text = normalize(by_item @ reviews), normalize(by_user @ reviews)

    return {
        "held_out_users": int(held.sum()),
        "popularity_hit_rate": _hit_rate(lambda rows: np.tile(counts, (len(rows), 1)), x, target_users, target_items),
        "cooccurrence_hit_rate": _hit_rate(lambda rows: (x[rows] @ cooccurrence).toarray(), x, target_users,
                                           target_items),
        "text_hit_rate": _hit_rate(lambda rows: (user_text[rows] @ item_text.T).toarray(), x, target_users,
                                   target_items),
        "text_neighbour_lift": _neighbour_lift(sparse.triu(gram, k=1).tocoo(), item_text, seed),
    }


def _last_of_each_user(user_index: np.ndarray, order: np.ndarray) -> np.ndarray:
    """A mask of each user's last review in `order`, for users with two or more reviews."""
    by_time = np.lexsort((np.arange(len(order)), order, user_index))
    sorted_users = user_index[by_time]
    last = np.r_[sorted_users[1:] != sorted_users[:-1], True]
    first = np.r_[True, sorted_users[1:] != sorted_users[:-1]]
    held = np.zeros(len(order), dtype=bool)
    held[by_time[last & ~first]] = True
    return held


def _hit_rate(score_rows, x: sparse.csr_matrix, target_users: np.ndarray, target_items: np.ndarray) -> float:
    """The share of targets in the top TOP_K of the items outside their user's history, ties at their mean place."""
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
        hits += float(((above + tied / 2.0) < TOP_K).sum())
    return round(hits / len(target_users), 4)


def _neighbour_lift(pairs: sparse.coo_matrix, item_text: sparse.csr_matrix, seed: int) -> float:
    """Mean TF-IDF cosine of co-reviewed item pairs (weighted by how many users share them) over that of random
    pairs of distinct items."""
    n_items = item_text.shape[0]
    if pairs.nnz == 0 or n_items < 2:
        return 1.0
    neighbours = np.asarray(item_text[pairs.row].multiply(item_text[pairs.col]).sum(axis=1)).ravel()
    rng = np.random.default_rng(seed)
    left = rng.integers(0, n_items, size=RANDOM_PAIRS)
    right = (left + rng.integers(1, n_items, size=RANDOM_PAIRS)) % n_items  # never the same item
    random = np.asarray(item_text[left].multiply(item_text[right]).sum(axis=1)).ravel()
    base = float(random.mean())
    return round(float(np.average(neighbours, weights=pairs.data)) / base, 4) if base > 0 else 1.0
