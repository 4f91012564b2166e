"""Interaction filters on index arrays: deduplication, minimum counts, k-core, user sampling.

All functions take and return boolean keep-masks or index arrays over the records read, so that the `prepare`
stage can count what each step dropped and why.
"""

from __future__ import annotations

import numpy as np


def first_per_pair(users: np.ndarray, items: np.ndarray, times: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Keep one record per (user, item): the earliest (ties: the first read). Returns the new keep-mask."""
    rows = np.flatnonzero(keep)
    order = np.lexsort((rows, times[rows], items[rows], users[rows]))  # by user, item, time, read order
    rows = rows[order]
    pair = users[rows].astype(np.int64) * (int(items.max(initial=0)) + 1) + items[rows]
    first = np.ones(len(rows), dtype=bool)
    first[1:] = pair[1:] != pair[:-1]
    out = np.zeros_like(keep)
    out[rows[first]] = True
    return out


def exact_duplicates(users: np.ndarray, items: np.ndarray, text_hashes: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Mask without repeats of the same (user, item, text): the 2018 dumps list one review several times."""
    rows = np.flatnonzero(keep)
    key = np.stack([users[rows], items[rows], text_hashes[rows]], axis=1)
    _, first = np.unique(key, axis=0, return_index=True)
    out = np.zeros_like(keep)
    out[rows[np.sort(first)]] = True
    return out


def min_count(ids: np.ndarray, keep: np.ndarray, minimum: int) -> np.ndarray:
    """Drop records whose id occurs fewer than `minimum` times among the kept records."""
    counts = np.bincount(ids[keep], minlength=int(ids.max(initial=0)) + 1)
    return keep & (counts[ids] >= minimum)


def count_filter(
    users: np.ndarray, items: np.ndarray, keep: np.ndarray, min_user: int, min_item: int, k_core: bool
) -> np.ndarray:
    """Users with >= min_user records, then items with >= min_item; with `k_core`, repeat to a fixed point."""
    while True:
        before = int(keep.sum())
        keep = min_count(users, keep, min_user)
        keep = min_count(items, keep, min_item)
        if not k_core or int(keep.sum()) == before:
            return keep


def sample_users(users: np.ndarray, keep: np.ndarray, max_users: int | None, seed: int) -> np.ndarray:
    """Keep the records of `max_users` users drawn uniformly without replacement (paper: 10,000)."""
    present = np.unique(users[keep])
    if max_users is None or len(present) <= max_users:
        return keep
    chosen = np.random.default_rng(seed).choice(present, size=max_users, replace=False)
    return keep & np.isin(users, chosen)
