"""Split protocols and evaluation candidates.

`random` is the paper's protocol (shuffle all positives, 70% train / 30% test) with a validation share carved
from train for early stopping and model selection. `leave_one_out` is the NCF protocol: each user's latest
interaction goes to test and the one before to validation. Evaluation candidates are sampled once, here, and
stored, so that every model is ranked against exactly the same negatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.prepared import SPLITS as SPLIT_NAMES  # label codes below index this tuple

TRAIN, VALID, TEST = 0, 1, 2


def random_split(n: int, test_share: float, valid_share: float, seed: int) -> np.ndarray:
    """Split labels (0 train, 1 valid, 2 test) for `n` positives shuffled uniformly."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_share))
    n_valid = int(round((n - n_test) * valid_share))
    labels = np.full(n, TRAIN, dtype=np.int8)
    labels[order[:n_test]] = TEST
    labels[order[n_test : n_test + n_valid]] = VALID
    return labels


def leave_one_out_split(users: np.ndarray, times: np.ndarray, seed: int) -> np.ndarray:
    """Latest interaction of each user to test, the one before to validation, the rest to train.

    Ties in time are broken by a seeded random key, so that same-day reviews do not follow file order. A user
    with two interactions gives one to test and one to train; a user with one keeps it in train (nothing to
    hold out without leaving the user unknown to the model).
    """
    tiebreak = np.random.default_rng(seed).random(len(users))
    order = np.lexsort((tiebreak, times, users))  # by user, then time, then tiebreak
    sorted_users = users[order]
    starts = np.r_[0, np.flatnonzero(sorted_users[1:] != sorted_users[:-1]) + 1]
    ends = np.r_[starts[1:], len(order)]
    sizes = ends - starts
    labels = np.full(len(users), TRAIN, dtype=np.int8)
    has_test = sizes >= 2
    labels[order[ends[has_test] - 1]] = TEST
    has_valid = sizes >= 3
    labels[order[ends[has_valid] - 2]] = VALID
    return labels


@dataclass(frozen=True)
class CandidateSet:
    """The sampled negatives of every held-out positive, as `sample_candidates` draws them.

    Attributes
    ----------
    split : (n,) int8 split labels, VALID or TEST.
    users, items : (n,) the user and the held-out positive item of each row.
    negatives : n arrays of item indices, each without duplicates and without any positive of the user.
    truncated : Positives that got fewer than the requested negatives (small item sets).
    """

    split: np.ndarray  # (n,) int8: VALID or TEST
    users: np.ndarray  # (n,)
    items: np.ndarray  # (n,) the held-out positive
    negatives: list[np.ndarray]  # n arrays of item indices, each without duplicates and without positives
    truncated: int  # positives that got fewer than the requested negatives (small item sets)


def sample_candidates(
    users: np.ndarray, items: np.ndarray, labels: np.ndarray, n_items: int, n_negatives: int, seed: int
) -> CandidateSet:
    """For every valid/test positive, `n_negatives` items the user never interacted with in any split.

    Sampled without replacement; where fewer eligible items exist, all of them are used and the positive is
    counted as truncated.
    """
    rng = np.random.default_rng(seed)
    held_out = np.flatnonzero(labels != TRAIN)
    held_out = held_out[np.lexsort((items[held_out], labels[held_out], users[held_out]))]
    order = np.argsort(users, kind="stable")
    bounds = np.searchsorted(users[order], np.arange(int(users.max(initial=-1)) + 2))
    negatives, truncated = [], 0
    for row in held_out:
        user = users[row]
        positives = items[order[bounds[user] : bounds[user + 1]]]
        eligible_count = n_items - len(np.unique(positives))
        if eligible_count <= n_negatives:
            chosen = np.setdiff1d(np.arange(n_items), positives)
            truncated += int(eligible_count < n_negatives)
        else:
            chosen = _draw_excluding(rng, n_items, positives, n_negatives)
        negatives.append(chosen.astype(np.int32))
    return CandidateSet(labels[held_out], users[held_out], items[held_out], negatives, truncated)


def _draw_excluding(rng: np.random.Generator, n_items: int, excluded: np.ndarray, size: int) -> np.ndarray:
    """`size` distinct items outside `excluded`, by rejection: cheap when the excluded set is small."""
    if len(excluded) * 2 > n_items:
        return rng.choice(np.setdiff1d(np.arange(n_items), excluded), size=size, replace=False)
    chosen = np.empty(0, dtype=np.int64)
    while len(chosen) < size:
        draw = rng.choice(n_items, size=2 * size, replace=True)
        draw = draw[~np.isin(draw, excluded)]
        chosen = np.concatenate([chosen, draw])
        _, first = np.unique(chosen, return_index=True)
        chosen = chosen[np.sort(first)]
    return chosen[:size]
