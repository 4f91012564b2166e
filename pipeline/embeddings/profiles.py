"""Semantic profiles b_u and b_i: the mean of a user's (item's) *training-split* review vectors.

Only training reviews count: a valid or test review is the text of a held-out interaction, so pooling it into a
profile would leak the label (paper summary, "profiles"). Users and items without a training review get the mean of
all training review vectors and `has_reviews` False, so the ranker can tell a fallback from a real profile.

`ProfileAccumulator` keeps running sums, O(users + items) memory, so profiles can be built while review vectors
stream past shard by shard.

A second user profile weighs the same training reviews by recency (`recency_weights`): where the next item is the
user's next purchase (leave-one-out), what they reviewed last says more about it than what they reviewed years ago.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRAIN = "train"


@dataclass(frozen=True)
class ProfileTables:
    users: np.ndarray  # (n_users, dim) float32
    items: np.ndarray  # (n_items, dim) float32
    user_counts: np.ndarray  # (n_users,) int64 training reviews pooled
    item_counts: np.ndarray  # (n_items,) int64
    recent_users: np.ndarray | None = None  # (n_users, dim) float32 recency-weighted, where times were given


class ProfileAccumulator:
    """Running float64 sums per user and item over training reviews."""

    def __init__(self, n_users: int, n_items: int, dim: int) -> None:
        self.user_sums = np.zeros((n_users, dim), dtype=np.float64)
        self.item_sums = np.zeros((n_items, dim), dtype=np.float64)
        self.user_counts = np.zeros(n_users, dtype=np.int64)
        self.item_counts = np.zeros(n_items, dtype=np.int64)
        self.total = np.zeros(dim, dtype=np.float64)
        self.n_total = 0

    def add(self, users: np.ndarray, items: np.ndarray, splits: np.ndarray, vectors: np.ndarray) -> None:
        """Add one batch of reviews; rows whose split is not "train" are ignored here, on purpose."""
        keep = np.asarray(splits) == TRAIN
        users, items, vectors = np.asarray(users)[keep], np.asarray(items)[keep], np.asarray(vectors)[keep]
        for name, index, size in (("user", users, len(self.user_counts)), ("item", items, len(self.item_counts))):
            if len(index) and (index.min() < 0 or index.max() >= size):
                raise ValueError(f"{name}_idx out of range [0, {size}): {int(index.min())}..{int(index.max())}")
        vectors = vectors.astype(np.float64)
        np.add.at(self.user_sums, users, vectors)
        np.add.at(self.item_sums, items, vectors)
        np.add.at(self.user_counts, users, 1)
        np.add.at(self.item_counts, items, 1)
        self.total += vectors.sum(0)
        self.n_total += len(vectors)

    def finalize(self, normalize: bool = False) -> ProfileTables:
        if self.n_total == 0:
            raise ValueError("no training-split review: profiles cannot be built")
        fallback = self.total / self.n_total
        users = _means(self.user_sums, self.user_counts, fallback)
        items = _means(self.item_sums, self.item_counts, fallback)
        if normalize:
            users, items = l2_normalize(users), l2_normalize(items)
        return ProfileTables(users.astype(np.float32), items.astype(np.float32), self.user_counts.copy(),
                             self.item_counts.copy())


def _means(sums: np.ndarray, counts: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    means = sums / np.maximum(counts, 1)[:, None]
    means[counts == 0] = fallback
    return means


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def mean_profiles(users: np.ndarray, items: np.ndarray, splits: np.ndarray, vectors: np.ndarray, n_users: int,
                  n_items: int, normalize: bool = False, times: np.ndarray | None = None) -> ProfileTables:
    """All-in-memory convenience form of `ProfileAccumulator` (same result); with the reviews' `times`, also the
    recency-weighted user profiles of the same training reviews."""
    acc = ProfileAccumulator(n_users, n_items, vectors.shape[1])
    acc.add(users, items, splits, vectors)
    tables = acc.finalize(normalize)
    if times is None:
        return tables
    train = np.asarray(splits) == TRAIN
    users = np.asarray(users)[train]
    recent = weighted_user_means(users, np.asarray(vectors)[train], recency_weights(users, np.asarray(times)[train]),
                                 n_users)
    if normalize:
        recent = l2_normalize(recent).astype(np.float32)
    return ProfileTables(tables.users, tables.items, tables.user_counts, tables.item_counts, recent)


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
    acc = WeightedUserSums(n_users, vectors.shape[1])
    acc.add(users, vectors, weights)
    return acc.finalize()


class WeightedUserSums:
    """Running weighted sums per user, so that a weighted profile can be built while vectors stream past."""

    def __init__(self, n_users: int, dim: int) -> None:
        self.sums = np.zeros((n_users, dim), dtype=np.float64)
        self.totals = np.zeros(n_users, dtype=np.float64)

    def add(self, users: np.ndarray, vectors: np.ndarray, weights: np.ndarray) -> None:
        users, weights = np.asarray(users, dtype=np.int64), np.asarray(weights, dtype=np.float64)
        if len(users) and (users.min() < 0 or users.max() >= len(self.totals)):
            raise ValueError(f"user_idx out of range [0, {len(self.totals)}): {int(users.min())}..{int(users.max())}")
        np.add.at(self.sums, users, np.asarray(vectors, dtype=np.float64) * weights[:, None])
        np.add.at(self.totals, users, weights)

    def finalize(self) -> np.ndarray:
        if self.totals.sum() <= 0:
            raise ValueError("no weighted training review: profiles cannot be built")
        fallback = self.sums.sum(0) / self.totals.sum()
        means = self.sums / np.maximum(self.totals, 1e-300)[:, None]
        means[self.totals <= 0] = fallback
        return means.astype(np.float32)
