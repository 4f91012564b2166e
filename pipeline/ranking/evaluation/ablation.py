"""The shuffled-profile ablation: the same vectors, no longer attached to the user or item they describe."""

from __future__ import annotations

import numpy as np

from pipeline.config import TEXT_MODELS, ConfigError, RunSpec
from pipeline.embeddings.cache import Profiles


def model_profiles(spec: RunSpec, profiles: Profiles | None, seed: int) -> Profiles | None:
    """The profiles a run's model sees: none, the cache's, or the cache's shuffled (seeded by train.seed)."""
    if spec.model not in TEXT_MODELS:
        return None
    if profiles is None:
        raise ConfigError(f"model {spec.model} needs an embedding cache (--embeddings)")
    return shuffle_profiles(profiles, seed) if spec.shuffle else profiles


def shuffle_profiles(profiles: Profiles, seed: int) -> Profiles:
    """The ablation: permute profiles across users and across items (seeded).

    The vectors keep their distribution and scale, but no longer belong to the user or item they describe, so any
    gain that survives the shuffle is not a text signal.
    """
    rng = np.random.default_rng(seed)
    pu = rng.permutation(profiles.users.shape[0])
    pi = rng.permutation(profiles.items.shape[0])
    return permuted(profiles, pu, pi)


def permuted(profiles: Profiles, pu: np.ndarray, pi: np.ndarray) -> Profiles:
    """Every table of `profiles` permuted by the same user and item orders (the lagged view too)."""
    return Profiles(
        users=profiles.users[pu],
        items=profiles.items[pi],
        user_has_reviews=profiles.user_has_reviews[pu],
        item_has_reviews=profiles.item_has_reviews[pi],
        meta=profiles.meta,
        recent_users=profiles.recent_users[pu] if profiles.recent_users is not None else None,
        lagged=permuted(profiles.lagged, pu, pi) if profiles.lagged is not None else None,
    )
