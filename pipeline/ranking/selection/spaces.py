"""Search spaces: the settings a closed-form model is chosen among on validation, kept apart from the model.

A model fits and scores; the space says which settings exist, how many, in what order of simplicity, and which of
them read no text. The selector (select.py) asks the model for candidates, and the model walks its space in the
order that shares its expensive parts. EASE's and the scalable solver's spaces are one list of values (lambdas,
text weights) handed to the model as such; bert_rs's dense search is the joint grid below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from pipeline.config.loading import check

TEXT_MATCHES = ("item_neighbours", "user_profile", "user_profile_recent")
REGULARISERS = ("ease", "l3ae")


class Setting(NamedTuple):
    """One point of bert_rs's joint grid.

    Attributes
    ----------
    whiten : ZCA-whiten the review vectors before any text part reads them.
    side_weight : a, the text gram's weight in mean interactions per item.
    ease_lambda : EASE's L2 penalty.
    regulariser : "ease" (||B||^2) or "l3ae" (||B - S||^2, S the text's own item model).
    text_match : which late text match w weighs (`TEXT_MATCHES`).
    text_weight : w.
    pop_weight : p, the popularity term's weight.
    item_weight : 1, or 0 at the popularity-alone point.
    """

    whiten: bool
    side_weight: float
    ease_lambda: float
    regulariser: str
    text_match: str
    text_weight: float
    pop_weight: float
    item_weight: float


ItemModel = tuple  # (whiten, side_weight, ease_lambda, regulariser): the part of a Setting one solve serves


@dataclass(frozen=True)
class ReviewAwareSpace:
    """bert_rs's dense grid: every (whitening, side weight, lambda, regulariser) item model, each with every
    (text match, w, p), w = 0 once whatever the match, and popularity alone when p has two or more values.

    Parameters
    ----------
    lambdas, side_weights, matches, text_weights, regularisers, whitening, pop_weights :
        Each grid in params order (`models.bert_rs.dense` and `models.bert_rs.text_weights`); the first value of
        each is what an unsearched model stands in.
    """

    lambdas: tuple[float, ...] = (500.0,)
    side_weights: tuple[float, ...] = (0.0,)
    matches: tuple[str, ...] = ("user_profile",)
    text_weights: tuple[float, ...] = (0.0,)
    regularisers: tuple[str, ...] = ("ease",)
    whitening: tuple[bool, ...] = (False,)
    pop_weights: tuple[float, ...] = (0.0,)

    def __post_init__(self) -> None:
        for name, cast in (("lambdas", float), ("side_weights", float), ("matches", str), ("text_weights", float),
                           ("regularisers", str), ("whitening", bool), ("pop_weights", float)):
            values = tuple(cast(v) for v in getattr(self, name))
            check(len(values) >= 1, f"search space {name}", "needs at least one value")
            object.__setattr__(self, name, values)
        unknown = [m for m in self.matches if m not in TEXT_MATCHES]
        if unknown:
            raise ValueError(f"text matches must be a non-empty subset of {TEXT_MATCHES}, got {list(self.matches)}")
        if any(r not in REGULARISERS for r in self.regularisers):
            raise ValueError(f"regularisers must be a non-empty subset of {REGULARISERS}, "
                             f"got {list(self.regularisers)}")

    @classmethod
    def from_config(cls, section) -> "ReviewAwareSpace":
        """The space of `models.bert_rs` (`pipeline.config.BertRSConfig`): its dense grids and text weights."""
        dense = section.dense
        return cls(dense.lambdas, dense.text_side_weights, dense.text_matches, section.text_weights,
                   dense.regularisers, dense.whitening, dense.pop_weights)

    @property
    def first(self) -> Setting:
        """The setting a model stands in before any search: the first value of every grid, no text match."""
        return Setting(self.whitening[0], 0.0, self.lambdas[0], self.regularisers[0], self.matches[0], 0.0, 0.0, 1.0)

    @property
    def with_prior(self) -> bool:
        """Whether any item model carries L3AE's text prior."""
        return "l3ae" in self.regularisers

    @property
    def popularity_alone(self) -> Setting | None:
        """The popularity-alone point, offered when p has a grid; None otherwise."""
        if len(self.pop_weights) < 2:
            return None
        return Setting(self.whitening[0], 0.0, self.lambdas[0], "ease", self.matches[0], 0.0, 1.0, 0.0)

    def item_models(self) -> list[ItemModel]:
        """Every (whitening, side weight, lambda, regulariser), lambda outermost: the order that shares one
        (b, n) x (n, n) product per lambda."""
        return [(whiten, side, lam, reg) for lam in self.lambdas for whiten in self.whitening
                for side in self.side_weights for reg in self.regularisers]

    def block(self, item_model: ItemModel) -> tuple[list[Setting], list[tuple[float, ...]]]:
        """The settings that share one item model, with each one's weights over the parts
        (item model, one text match per `matches`, popularity)."""
        whiten, side, lam, reg = item_model
        settings, weights = [], []
        for position, match in enumerate(self.matches):
            for w in self.text_weights:
                if w == 0.0 and match != self.matches[0]:
                    continue  # w = 0 ignores the match: offered once already
                for p in self.pop_weights:
                    settings.append(Setting(whiten, side, lam, reg, match, w, p, 1.0))
                    weights.append((1.0, *(w if m == position else 0.0 for m in range(len(self.matches))), p))
        return settings, weights

    def __len__(self) -> int:
        """How many settings the space holds (the search's progress total)."""
        zero_weights = sum(w == 0.0 for w in self.text_weights)
        per_item_model = ((len(self.text_weights) - zero_weights) * len(self.matches) + zero_weights) \
            * len(self.pop_weights)
        return (self.popularity_alone is not None) + len(self.item_models()) * per_item_model

    @staticmethod
    def is_plain(setting: Setting) -> bool:
        """Popularity alone, or EASE at some lambda with or without a popularity term: nothing read from the text
        (whitening changes nothing when neither the gram, the prior nor the match reads the vectors)."""
        return setting.item_weight == 0.0 or (setting.side_weight == 0.0 and setting.text_weight == 0.0
                                              and setting.regulariser == "ease")

    @staticmethod
    def simplicity(setting: Setting) -> tuple:
        """The order of the "simplest_within_noise" rule (select.py), lower is simpler: no text first (plain EASE
        at any lambda, popularity, or both), then fewer text parts (the side gram a, the L3AE prior, the text
        match w, and whitening where any of them reads the vectors), then a smaller side weight, then a smaller
        text weight. lambda and the popularity weight read no text and are left to the score."""
        if setting.item_weight == 0.0:
            return (0, 0.0, 0.0)
        parts = (setting.side_weight > 0) + (setting.regulariser == "l3ae") + (setting.text_weight > 0)
        return (parts + (parts > 0 and setting.whiten), setting.side_weight, setting.text_weight)

    def grid_position(self, setting: Setting) -> tuple:
        """Where ties on validation are settled: popularity alone, then whitening, side weight, lambda,
        regulariser, text match, w and p, each in params order (w = 0 goes with the first match)."""
        if setting.item_weight == 0.0:
            return (0,)
        match = self.matches.index(setting.text_match) if setting.text_weight else 0
        return (1, self.whitening.index(setting.whiten), self.side_weights.index(setting.side_weight),
                self.lambdas.index(setting.ease_lambda), self.regularisers.index(setting.regulariser), match,
                self.text_weights.index(setting.text_weight), self.pop_weights.index(setting.pop_weight))

