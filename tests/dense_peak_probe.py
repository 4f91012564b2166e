"""The peak memory of the dense bert_rs, in n_items^2 float64 matrices: fit, the validation search over a small
joint grid (both regularisers, side weights and whitenings) and the final fit on training + validation pairs.

    python -m tests.dense_peak_probe N_USERS N_ITEMS

A process of its own, so that its peak RSS is this model's; run it with MALLOC_MMAP_THRESHOLD_ set low, so that a
freed matrix is given back to the system at once and RSS follows what is alive."""

from __future__ import annotations

import resource
import sys

import numpy as np
import psutil
import torch

from pipeline.embeddings.cache import Profiles
from pipeline.ranking.models.review_ease import ReviewAwareEASE
from pipeline.ranking.selection.select import select
from pipeline.ranking.selection.spaces import ReviewAwareSpace
from tests.ranking_fixtures import in_memory_data

PROFILE_WIDTH = 16  # narrow, so that the (items x width) arrays stay small beside n_items^2 even at a few thousand


def peak_in_item_matrices(n_users: int, n_items: int, per_user: int = 20) -> float:
    rng = np.random.default_rng(0)
    items = rng.choice(n_items, size=(n_users, per_user + 2))
    train = (np.repeat(np.arange(n_users), per_user), items[:, :per_user].ravel())
    users = np.arange(n_users)
    data = in_memory_data(n_users, n_items, train, (users, items[:, per_user]), (users, items[:, per_user + 1]))
    profiles = Profiles(*(rng.normal(size=(n, PROFILE_WIDTH)).astype(np.float32) for n in (n_users, n_items)),
                        np.ones(n_users, bool), np.ones(n_items, bool), {},
                        rng.normal(size=(n_users, PROFILE_WIDTH)).astype(np.float32))
    before = max(psutil.Process().memory_info().rss, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    model = ReviewAwareEASE(n_users, n_items, profiles,
                            ReviewAwareSpace(lambdas=[10.0, 1000.0], side_weights=[0.0, 2.0], matches=["user_profile"],
                                             text_weights=[0.0, 0.5], regularisers=["ease", "l3ae"],
                                             whitening=[False, True]))
    choice = select(model.fit(*train), data)
    model.refit(np.concatenate([train[0], users]), np.concatenate([train[1], items[:, per_user]]), choice)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return (peak - before) / (8.0 * n_items**2)


if __name__ == "__main__":
    torch.set_num_threads(2)
    print(f"{peak_in_item_matrices(int(sys.argv[1]), int(sys.argv[2])):.3f}")
