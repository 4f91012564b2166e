"""What a choice on validation is: the setting kept, its score, how many candidates were looked at.

Models receive one (`ClosedFormRanker.apply`) and the selector (select.py) makes one; this module imports nothing
else of the ranking room, so the interface and the rule can both name it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

Setting = TypeVar("Setting")


@dataclass(frozen=True)
class Choice(Generic[Setting]):
    setting: Setting  # the candidate kept
    score: float  # its validation full-ranking NDCG@10
    looks: int  # candidates scored to choose it
    # the guard's measurement, where the best setting was not plain: the gain over the best plain setting of the
    # search's winner on users it was not chosen on (NDCG@10; the plain setting is kept when it is <= 0)
    cross_fitted_gain: float | None = None
    overruled: bool = False  # the guard kept the best plain setting instead of the validation best

    def summary(self) -> dict:
        """What run.json records of the choice (the setting itself is the model's `choices()`)."""
        return {"validation_looks": self.looks, "valid_ndcg@10": round(self.score, 6),
                "cross_fitted_gain": None if self.cross_fitted_gain is None else round(self.cross_fitted_gain, 6),
                "kept_plain_over_best": self.overruled}
