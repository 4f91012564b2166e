"""Semantic profiles b_u and b_i: the mean of a user's (item's) *training-split* review vectors.

Only training reviews count: a valid or test review is the text of a held-out interaction, so pooling it into a
profile would leak the label (paper summary, "profiles"). Users and items without a training review get the mean of
all training review vectors and `has_reviews` False, so the ranker can tell a fallback from a real profile.

`ProfileAccumulator` keeps running sums (`RunningMeans`), O(users + items) memory, so profiles can be built while
review vectors stream past shard by shard.

A second user profile weighs the same training reviews by recency (`recency_weights`): where the next item is the
user's next purchase (leave-one-out), what they reviewed last says more about it than what they reviewed years ago.

Both user profiles also come one review behind (`lagged_user_weights`): each user's newest training review left out.
The ranker chooses its text settings with them when test will be scored one interaction after the profiles' newest
review (pipeline/ranking/training/lagged.py, `profiles_lag_history`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

TRAIN = "train"


@dataclass(frozen=True)
class ProfileTables:
    """User and item profile tables as the profile builders return them.

    Attributes
    ----------
    users, items : (n_users, dim) and (n_items, dim) float32 mean profiles of the training reviews (L2-normalised
        where asked).
    user_counts, item_counts : (n_users,) and (n_items,) int64 training reviews pooled into each profile (0: the
        fallback vector).
    recent_users : (n_users, dim) float32 recency-weighted user profiles, where the reviews' times were given.
    lagged_users, lagged_recent_users : (n_users, dim) float32 the mean and recency-weighted user profiles with each
        user's newest training review left out, where asked for.
    """

    users: np.ndarray  # (n_users, dim) float32
    items: np.ndarray  # (n_items, dim) float32
    user_counts: np.ndarray  # (n_users,) int64 training reviews pooled
    item_counts: np.ndarray  # (n_items,) int64
    recent_users: np.ndarray | None = None  # (n_users, dim) float32 recency-weighted, where times were given
    # (n_users, dim) float32 each: the mean and recency-weighted profiles one review behind, where asked for
    lagged_users: np.ndarray | None = None
    lagged_recent_users: np.ndarray | None = None


class RunningMeans:
    """Running (optionally weighted) float64 sums of vectors per row and over all rows: one profile table (users or
    items) built while review vectors stream past, in O(rows x dim) memory whatever the number of reviews. Rows that
    received no weight get the weighted mean of everything added, so a fallback is an average review, not zero."""

    def __init__(self, n_rows: int, dim: int, index_name: str) -> None:
        self.index_name = index_name
        self.sums = np.zeros((n_rows, dim), dtype=np.float64)
        self.weights = np.zeros(n_rows, dtype=np.float64)  # unweighted: exact counts (float64 is exact to 2^53)
        self.total = np.zeros(dim, dtype=np.float64)
        self.total_weight = 0.0

    def check_in_range(self, index: np.ndarray) -> None:
        """Raise before anything changes; public so that a caller feeding several tables checks them all first."""
        if len(index) and (index.min() < 0 or index.max() >= len(self.weights)):
            raise ValueError(f"{self.index_name}_idx out of range [0, {len(self.weights)}): "
                             f"{int(index.min())}..{int(index.max())}")

    def add(self, index: np.ndarray, vectors: np.ndarray, weights: np.ndarray | None = None) -> None:
        """Add one batch; no `weights` counts every vector once."""
        index = np.asarray(index, dtype=np.int64)
        self.check_in_range(index)
        vectors = np.asarray(vectors, dtype=np.float64)
        weights = np.ones(len(index)) if weights is None else np.asarray(weights, dtype=np.float64)
        weighted = vectors * weights[:, None]
        np.add.at(self.sums, index, weighted)
        np.add.at(self.weights, index, weights)
        self.total += weighted.sum(0)
        self.total_weight += float(weights.sum())

    def means(self) -> np.ndarray:
        """(n_rows, dim) float64"""
        if self.total_weight <= 0:
            raise ValueError("no training review with weight > 0: profiles cannot be built")
        means = self.sums / np.where(self.weights > 0, self.weights, 1.0)[:, None]
        means[self.weights <= 0] = self.total / self.total_weight
        return means


class ProfileAccumulator:
    """The user and item `RunningMeans` of training reviews, fed by the same review batches."""

    def __init__(self, n_users: int, n_items: int, dim: int) -> None:
        self.users = RunningMeans(n_users, dim, "user")
        self.items = RunningMeans(n_items, dim, "item")

    def add(self, users: np.ndarray, items: np.ndarray, splits: np.ndarray, vectors: np.ndarray) -> None:
        """Add one batch of reviews; rows whose split is not "train" are ignored here, on purpose."""
        keep = np.asarray(splits) == TRAIN
        users, items = np.asarray(users, dtype=np.int64)[keep], np.asarray(items, dtype=np.int64)[keep]
        self.users.check_in_range(users)  # both checked before either table changes
        self.items.check_in_range(items)
        vectors = np.asarray(vectors)[keep]  # the training rows only; RunningMeans sums them in float64
        self.users.add(users, vectors)
        self.items.add(items, vectors)

    def finalize(self, normalize: bool = False) -> ProfileTables:
        """The mean profiles of everything added (fallback rows: the mean of all training reviews), L2-normalised when
        `normalize`, as float32 tables with their review counts."""
        users, items = self.users.means(), self.items.means()
        if normalize:
            users, items = l2_normalize(users), l2_normalize(items)
        return ProfileTables(users.astype(np.float32), items.astype(np.float32),
                             self.users.weights.astype(np.int64), self.items.weights.astype(np.int64))


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """`vectors` (n, dim) with each row scaled to unit L2 norm (an all-zero row stays zero)."""
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def mean_profiles(users: np.ndarray, items: np.ndarray, splits: np.ndarray, vectors: np.ndarray, n_users: int,
                  n_items: int, normalize: bool = False, times: np.ndarray | None = None,
                  lagged: bool = False) -> ProfileTables:
    """All-in-memory convenience form of `ProfileAccumulator` (same result); with the reviews' `times`, also the
    recency-weighted user profiles of the same training reviews, and with `lagged` both user profiles one review
    behind (`lagged_user_weights`)."""
    acc = ProfileAccumulator(n_users, n_items, vectors.shape[1])
    acc.add(users, items, splits, vectors)
    tables = acc.finalize(normalize)
    if times is None:
        if lagged:
            raise ValueError("lagged profiles need the reviews' times (which review is each user's newest)")
        return tables
    train = np.asarray(splits) == TRAIN
    users, vectors, times = np.asarray(users)[train], np.asarray(vectors)[train], np.asarray(times)[train]
    views = user_view_weights(users, times, lagged)
    means = {name: weighted_user_means(users, vectors, weights, n_users) for name, weights in views.items()}
    if normalize:
        means = {name: l2_normalize(m).astype(np.float32) for name, m in means.items()}
    return dataclasses.replace(tables, **means)


RECENCY_HALF_LIFE = 1.0  # in reviews: the newest training review counts 1, the one before it 1/2, then 1/4, ...


def recency_weights(users: np.ndarray, times: np.ndarray, half_life: float = RECENCY_HALF_LIFE) -> np.ndarray:
    """0.5 ** (newer / half_life) per review, `newer` the number of the same user's reviews strictly newer than it
    (reviews with equal times share a weight, so a dump without distinct times gives the plain mean). Pass the
    training reviews only: a held-out review must not push a training review down. (n,) -> (n,) float64"""
    users, times = np.asarray(users, dtype=np.int64), np.asarray(times, dtype=np.int64)
    if len(users) == 0:
        return np.zeros(0)
    order = np.lexsort((-times, users))  # by user, newest first
    u, t = users[order], times[order]
    starts = np.r_[True, u[1:] != u[:-1]]
    new_time = starts | np.r_[True, t[1:] != t[:-1]]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(u)), 0))
    first_of_time = np.maximum.accumulate(np.where(new_time, np.arange(len(u)), 0))
    newer = np.empty(len(u), dtype=np.float64)
    newer[order] = first_of_time - group_start  # position of the first review with this time within the user
    return 0.5 ** (newer / half_life)


def weighted_user_means(users: np.ndarray, vectors: np.ndarray, weights: np.ndarray, n_users: int) -> np.ndarray:
    """sum_r w_r v_r / sum_r w_r per user; users without weight get the weighted mean of all. (n_users, dim) float32"""
    means = RunningMeans(n_users, vectors.shape[1], "user")
    means.add(users, vectors, weights)
    return means.means().astype(np.float32)


def newest_of_each_user(users: np.ndarray, times: np.ndarray) -> np.ndarray:
    """(n,) bool: each user's newest review (equal times: the later row), for users with two reviews or more, so
    that no user is left without one. Pass the training reviews only. (Leave-one-out breaks equal times by a seeded
    random key, pipeline/data/splits.py; where several reviews share the newest time, the one left out here need
    not be the one the split put just before the validation item.)"""
    users, times = np.asarray(users, dtype=np.int64), np.asarray(times, dtype=np.int64)
    order = np.lexsort((np.arange(len(users)), times, users))  # by user, then time, then row: newest last
    last = np.r_[users[order][1:] != users[order][:-1], True] if len(users) else np.zeros(0, dtype=bool)
    newest = np.zeros(len(users), dtype=bool)
    newest[order[last]] = np.bincount(users, minlength=int(users.max(initial=-1)) + 1)[users[order[last]]] >= 2
    return newest


def lagged_user_weights(users: np.ndarray, times: np.ndarray, half_life: float = RECENCY_HALF_LIFE
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(mean weights, recency weights) of the training reviews for user profiles one review behind: each user's
    newest training review weighs 0 (`newest_of_each_user`), the others as in the mean and in `recency_weights`
    over what is left (the review before the newest counts 1).

    Why: after the final fit, test scores a leave-one-out target from a history whose newest interaction is the
    validation one, whose review is not in the profile (profiles are training-only), so the profile lags the
    target by one interaction more than the history does. Choosing the text settings with profiles that lag the
    validation target the same way keeps the choice from counting on a review adjacent to the target that test
    never has. (n,) -> (n,) float64 each"""
    users, times = np.asarray(users, dtype=np.int64), np.asarray(times, dtype=np.int64)
    kept = ~newest_of_each_user(users, times)
    recent = np.zeros(len(users))
    recent[kept] = recency_weights(users[kept], times[kept], half_life)
    return kept.astype(np.float64), recent


def user_view_weights(users: np.ndarray, times: np.ndarray, lagged: bool, half_life: float = RECENCY_HALF_LIFE
                      ) -> dict[str, np.ndarray]:
    """The weights of the training reviews in each extra user profile, named as `ProfileTables` names them:
    recent_users, and with `lagged` lagged_users and lagged_recent_users. (n,) -> {name: (n,) float64}"""
    views = {"recent_users": recency_weights(users, times, half_life)}
    if lagged:
        views["lagged_users"], views["lagged_recent_users"] = lagged_user_weights(users, times, half_life)
    return views
