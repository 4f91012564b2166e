"""The recency pass over a cache's reviews: each user's training reviews weighted from the newest back.

`with_recent_users` streams the cache's review vectors once and returns the profiles with the recency-weighted user
profiles (the `user_profile_recent` match) and, where asked, the lagged view one review behind
(pipeline/ranking/training/lagged.py). It reads the cache through its contract (pipeline/embeddings/cache.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.embeddings.cache import REVIEWS_FILE, Profiles, arrow_to_vectors
from pipeline.embeddings.profiles import RECENCY_HALF_LIFE, TRAIN, RunningMeans, l2_normalize, user_view_weights
from pipeline.io import DataError


def with_recent_users(profiles: Profiles, root: str | Path, reviews: pa.Table,
                      half_life: float = RECENCY_HALF_LIFE, lagged: bool = False) -> Profiles:
    """`profiles` with `recent_users` filled in: each user's training reviews weighted by `recency_weights` (a
    review without a time counts as the oldest), unit length where the cache's profiles are; with `lagged`, also
    `lagged`: both user profiles one review behind (`lagged_user_weights`), from the same pass.

    `reviews` is the prepared data's (review_id, user_idx, time, split) table; the cache's review vectors are
    streamed in their stored order, one Parquet batch at a time (vector memory O(users x dim); the ids, times and
    weights are O(reviews) scalars), and must list the same review ids in the same order, as `embed` writes them."""
    root = Path(root)
    path, d = root / REVIEWS_FILE, int(profiles.meta["dim"])
    train = reviews.column("split").to_numpy(zero_copy_only=False) == TRAIN
    users = reviews.column("user_idx").to_numpy()[train]
    times = reviews.column("time").fill_null(0).to_numpy()[train]
    views = user_view_weights(users, times, lagged, half_life)
    weights = {name: np.zeros(reviews.num_rows) for name in views}
    for name, w in views.items():
        weights[name][train] = w
    expected_ids = reviews.column("review_id").to_numpy()
    means = {name: RunningMeans(len(profiles.users), d, "user") for name in views}
    if not path.is_file():
        raise DataError(f"{path}: file not found (has `bertrs embed` finished?)")
    start = 0
    for batch in pq.ParquetFile(path).iter_batches(columns=["review_id", "user_idx", "embedding"]):
        ids = batch.column(0).to_numpy()
        stop = start + len(ids)
        if stop > len(expected_ids) or not np.array_equal(ids, expected_ids[start:stop]):
            raise DataError(f"{path}: reviews differ from the prepared data's (review ids or their order, rows "
                            f"{start}..{stop}); rerun `bertrs embed` on this data")
        keep = train[start:stop]
        if keep.any():
            vectors, batch_users = arrow_to_vectors(batch.column(2), d)[keep], batch.column(1).to_numpy()[keep]
            for name, running in means.items():
                running.add(batch_users, vectors, weights[name][start:stop][keep])
        start = stop
    if start != len(expected_ids):
        raise DataError(f"{path}: {start} reviews, the prepared data has {len(expected_ids)}; rerun `bertrs embed`")
    tables = {name: running.means().astype(np.float32) for name, running in means.items()}
    if profiles.meta.get("normalize_profiles"):
        tables = {name: l2_normalize(t).astype(np.float32) for name, t in tables.items()}
    behind = None
    if lagged:
        behind = dataclasses.replace(profiles, users=tables["lagged_users"], recent_users=tables["lagged_recent_users"],
                                     lagged=None)
    return dataclasses.replace(profiles, recent_users=tables["recent_users"], lagged=behind)
