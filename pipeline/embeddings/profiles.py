"""Semantic profiles b_u and b_i: the mean of a user's (item's) *training-split* review vectors.

Only training reviews count: a valid or test review is the text of a held-out interaction, so pooling it into a
profile would leak the label (paper summary, "profiles"). Users and items without a training review get the mean of
all training review vectors and `has_reviews` False, so the ranker can tell a fallback from a real profile.

`ProfileAccumulator` keeps running sums, O(users + items) memory, so profiles can be built while review vectors
stream past shard by shard.
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
                  n_items: int, normalize: bool = False) -> ProfileTables:
    """All-in-memory convenience form of `ProfileAccumulator` (same result)."""
    acc = ProfileAccumulator(n_users, n_items, vectors.shape[1])
    acc.add(users, items, splits, vectors)
    return acc.finalize(normalize)
