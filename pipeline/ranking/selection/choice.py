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
    """A choice among a model's candidates on validation (or among a trained model's epochs).

    Attributes
    ----------
    setting : The candidate kept.
    score : Its validation full-ranking NDCG@10.
    looks : Candidates scored to choose it.
    cross_fitted_gain : The guard's measurement (`train.guard_additions`), where the best setting was not plain: the
        NDCG@10 gain of the search's winner over the best plain setting on users it was not chosen on (the plain
        setting is kept when <= 0); None where the guard did not measure.
    overruled : The rule or the guard kept a simpler setting than the validation best.
    rule : The choice rule that kept it (select.py's CHOICE_RULES).
    best_score : The validation best's NDCG@10.
    gap_error : "simplest_within_noise": the standard error of the kept setting's gap to the best.
    screened_to : Candidates scored on every validation user after screening (None: all were).
    hit_rate : Its validation full-ranking HR@10, as the search measured it beside `score`.
    """

    setting: Setting  # the candidate kept
    score: float  # its validation full-ranking NDCG@10
    looks: int  # candidates scored to choose it
    # the guard's measurement (train.guard_additions), where the best setting was not plain: the gain over the best
    # plain setting of the search's winner on users it was not chosen on (NDCG@10; the plain setting is kept when <= 0)
    cross_fitted_gain: float | None = None
    overruled: bool = False  # the rule or the guard kept a simpler setting than the validation best
    rule: str = "best"  # the choice rule that kept it (select.py's CHOICE_RULES)
    best_score: float | None = None  # the validation best's NDCG@10
    gap_error: float | None = None  # "simplest_within_noise": the standard error of the kept setting's gap to the best
    screened_to: int | None = None  # candidates scored on every validation user after screening (None: all were)
    hit_rate: float | None = None  # its validation full-ranking HR@10, as the search measured it beside `score`

    def validation(self, positives: int) -> dict:
        """The kept setting's validation metrics as the search measured them, in `valid_metrics`' form, over the
        split's `positives` (what a final fit that solves the setting anew records instead of solving it twice)."""
        return {"hr@10": self.hit_rate, "ndcg@10": self.score, "n": positives}

    def summary(self) -> dict:
        """What run.json records of the choice (the setting itself is the model's `choices()`)."""
        def rounded(x: float | None) -> float | None:
            return None if x is None else round(x, 6)
        return {"validation_looks": self.looks, "valid_ndcg@10": round(self.score, 6), "rule": self.rule,
                "best_valid_ndcg@10": rounded(self.best_score), "gap_standard_error": rounded(self.gap_error),
                "cross_fitted_gain": rounded(self.cross_fitted_gain), "kept_simpler_than_best": self.overruled,
                "screened_to": self.screened_to}
