"""Negative sampling and fast "has this user seen this item" lookups, vectorised with numpy.

A (user, item) pair is encoded as one int64 key `user * n_items + item`; a sorted array of keys answers membership
for millions of pairs with one `np.searchsorted`, which is what keeps rejection sampling free of Python loops.
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline.io import DataError


class PairSet:
    """A set of (user, item) pairs, queried in bulk."""

    def __init__(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> None:
        self.n_users, self.n_items = n_users, n_items
        self.keys = np.unique(np.asarray(users, np.int64) * n_items + np.asarray(items, np.int64))  # sorted
        # CSR view: the items of user u are indices[indptr[u]:indptr[u + 1]], sorted
        key_users = self.keys // n_items
        self.indices = self.keys % n_items
        self.indptr = np.searchsorted(key_users, np.arange(n_users + 1), side="left")

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Element-wise membership; shapes broadcast. Returns bool of the broadcast shape."""
        keys = np.asarray(users, np.int64) * self.n_items + np.asarray(items, np.int64)
        if len(self.keys) == 0:
            return np.zeros(keys.shape, bool)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return self.keys[pos] == keys

    def counts(self) -> np.ndarray:
        """Pairs per user. (n_users,)"""
        return np.diff(self.indptr)

    def dense_mask(self, users: np.ndarray) -> torch.Tensor:
        """Boolean (b, n_items) rows for a batch of users, True where the pair is in the set."""
        users = np.asarray(users, np.int64)
        starts, ends = self.indptr[users], self.indptr[users + 1]
        lengths = ends - starts
        rows = np.repeat(np.arange(len(users)), lengths)
        # positions starts[r] .. ends[r]-1 for every row r, without a loop
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        cols = self.indices[np.repeat(starts, lengths) + offsets]
        mask = torch.zeros((len(users), self.n_items), dtype=torch.bool)
        mask[torch.as_tensor(rows), torch.as_tensor(cols)] = True
        return mask


def sample_negatives(
    rng: np.random.Generator, users: np.ndarray, num_negatives: int, seen: PairSet, max_rounds: int = 100
) -> np.ndarray:
    """Uniform negatives among the items each user has not interacted with in `seen` (the training pairs).

    Draw everything at once, then redraw only the rejected cells until none is left (rejection sampling); with
    sparse data one or two rounds suffice. users: (n,) -> (n, num_negatives) int64.
    """
    users = np.asarray(users, np.int64)
    full = np.flatnonzero(seen.counts()[np.unique(users)] >= seen.n_items)
    if len(full):
        raise DataError(f"user index {np.unique(users)[full[0]]} has interacted with every item: no negatives exist")
    grid_users = np.broadcast_to(users[:, None], (len(users), num_negatives))
    negatives = rng.integers(0, seen.n_items, size=grid_users.shape, dtype=np.int64)
    bad = seen.contains(grid_users, negatives)
    for _ in range(max_rounds):
        if not bad.any():
            return negatives
        negatives[bad] = rng.integers(0, seen.n_items, size=int(bad.sum()), dtype=np.int64)
        bad[bad] = seen.contains(grid_users[bad], negatives[bad])
    raise DataError(f"negative sampling did not converge in {max_rounds} rounds (users with almost every item?)")


class NegativeSampler:
    """Per-epoch negatives for the training positives; a seeded generator kept across epochs redraws them."""

    def __init__(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, seed: int) -> None:
        self.users = np.asarray(users, np.int64)
        self.items = np.asarray(items, np.int64)
        self.seen = PairSet(self.users, self.items, n_users, n_items)
        self.rng = np.random.default_rng(seed)

    def epoch(self, num_negatives: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Shuffled (users (n,), positives (n,), negatives (n, k)) for one epoch."""
        order = self.rng.permutation(len(self.users))
        users, pos = self.users[order], self.items[order]
        return users, pos, sample_negatives(self.rng, users, num_negatives, self.seen)
