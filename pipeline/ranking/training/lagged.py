"""The lagged-profile rule: which user profiles a text model chooses its settings with.

The final fit (`train.refit_with_validation`) hands the validation interaction to the history that test is scored
from, never its review to the profile. Under leave-one-out that interaction is the one just before the test target,
so test reads each user's history one interaction newer than their profile. A text model therefore makes its
choices (bert_rs its grid point, a neural text head its epoch count) with profiles one review behind (the cache's
`lagged` view, pipeline/embeddings/profiles.py `lagged_user_weights`) and is tested with the whole training
profiles. Under the random split, or without the final fit, nothing lags.
"""

from __future__ import annotations

import dataclasses

from pipeline.config import TrainConfig
from pipeline.data.prepared import PreparedData
from pipeline.embeddings.cache import Profiles

# TrainResult.chosen_with_profiles: the user profiles a text model's settings were chosen with
WHOLE_PROFILES = "training reviews"
LAGGED_PROFILES = "newest training review left out"


def profiles_lag_history(data: PreparedData, shared: TrainConfig) -> bool:
    """Whether test will score each user from a history one interaction newer than their profile.

    Parameters
    ----------
    data : The prepared data (its `stats.json` protocol and validation split).
    shared : The `train` section (`refit_with_validation`).

    Returns
    -------
    True under leave-one-out with a final fit and validation pairs to hand over; False otherwise.
    """
    return shared.refit_with_validation and data.stats.get("protocol") == "leave_one_out" and len(data.valid) > 0


def without_lag(profiles: Profiles | None) -> Profiles | None:
    """`profiles` without their lagged view: what a run reads when test is scored as validation was."""
    if profiles is None or profiles.lagged is None:
        return profiles
    return dataclasses.replace(profiles, lagged=None)


def profiles_to_choose_with(profiles: Profiles | None, chooses: bool) -> tuple[Profiles | None, str]:
    """The profiles a model makes its choices with, and which they are.

    Parameters
    ----------
    profiles : The run's profiles (shuffled where the run asks), with a lagged view where test lags them.
    chooses : Whether this fit chooses anything on validation (a closed-form grid, or a neural model's epochs
        when they are not fixed from outside).

    Returns
    -------
    (the lagged view, LAGGED_PROFILES) where there is one and the fit chooses; else (profiles, WHOLE_PROFILES).
    """
    if profiles is not None and profiles.lagged is not None and chooses:
        return profiles.lagged, LAGGED_PROFILES
    return profiles, WHOLE_PROFILES
