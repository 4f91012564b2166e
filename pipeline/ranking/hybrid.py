"""BERT-RS, the default model: a closed-form item-item recommender that reads the review vectors twice.

    B_a     = EASE solved on  X^T X + a m F F^T                 text as side information (Jeunen et al. 2020)
    t_u     = x_u S,  S = F F^T with a zero diagonal            "item_neighbours": items whose reviews read alike
            | cos(b_u - mu_u, b_i - mu_i)                       "user_profile": the user's reviews against the item's
    score   = z_u(x_u B_a) + w z_u(t_u)

F holds the unit-length centred item profiles (the mean of each item's *training* review vectors), x_u is the user's
training row, z_u standardises a user's scores over all items, and m is the mean number of training interactions
per item, so that `a` reads as "the text gram counts as `a` average items' worth of co-occurrence" on any dataset.

Why this form won (issue 7, benchmarks/results/text_signals.md): the neural fusion heads never caught up with EASE
on these small, sparse sets, and a user profile matched against an item profile adds only a few percent. Adding
F F^T to the Gram matrix is what stacking the review vectors under X as extra pseudo-users does: EASE then has to
reconstruct text similarity as well as co-occurrence, so an item with few interactions borrows weight from items
whose reviews describe it alike. The late text term adds the zero-shot match on top.

`a`, the text match and `w` are picked from fixed grids by full-ranking NDCG@10 on the validation split only;
a = w = 0 is EASE itself, so on validation the model can only match or beat EASE. Leakage: F and b_u are pooled
from training reviews only (the cache's profiles), so no held-out review reaches the scores; the shuffled-profile
ablation scrambles both and must lose the gain.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.data.prepared import PreparedData
from pipeline.embeddings.cache import Profiles
from pipeline.ranking.baselines import EASE, ease_weights, score_via_all
from pipeline.ranking.evaluate import full_ranking_mask, rank_full
from pipeline.ranking.metrics import metrics_from_ranks

TEXT_MATCHES = ("item_neighbours", "user_profile")


def standardise(scores: torch.Tensor) -> torch.Tensor:
    """Per-row z-score. (b, n) -> (b, n)"""
    return (scores - scores.mean(-1, keepdim=True)) / (scores.std(-1, keepdim=True) + 1e-8)


def centred_units(vectors: np.ndarray) -> torch.Tensor:
    """Unit-length rows after removing the mean row: the direction every review shares carries no preference."""
    t = torch.tensor(vectors, dtype=torch.float32)
    return F.normalize(t - t.mean(0), dim=-1, eps=1e-8)


class ReviewAwareEASE(nn.Module):
    trainable = False
    ranks_whole_catalogue = True  # scores come from full rows; profile-nearest candidates would drop EASE's picks

    def __init__(
        self,
        n_users: int,
        n_items: int,
        profiles: Profiles,
        ease_lambda: float,
        side_weights: Sequence[float] = (0.0,),
        matches: Sequence[str] = ("user_profile",),
        weights: Sequence[float] = (0.0,),
    ) -> None:
        super().__init__()
        unknown = [m for m in matches if m not in TEXT_MATCHES]
        if unknown or not matches:
            raise ValueError(f"text matches must be a non-empty subset of {TEXT_MATCHES}, got {list(matches)}")
        self.n_users, self.n_items = n_users, n_items
        self.ease = EASE(n_users, n_items, ease_lambda)
        self.grid_side = [float(a) for a in side_weights]
        self.grid_match = list(matches)
        self.grid_weight = [float(w) for w in weights]
        # the choices, saved in the checkpoint beside ease.B (which already includes the side information)
        self.register_buffer("side_weight", torch.tensor(0.0))
        self.register_buffer("text_weight", torch.tensor(0.0))
        self.register_buffer("match_index", torch.tensor(TEXT_MATCHES.index(self.grid_match[0])))
        self.register_buffer("unit_u", centred_units(profiles.users), persistent=False)  # (n_users, dim)
        self.register_buffer("unit_i", centred_units(profiles.items), persistent=False)  # (n_items, dim)

    @property
    def match(self) -> str:
        return TEXT_MATCHES[int(self.match_index)]

    # ------------------------------------------------------------------------------------------------ fitting

    def fit(self, users: np.ndarray, items: np.ndarray) -> "ReviewAwareEASE":
        """EASE on the training matrix; `select_on_validation` then adds the side information it picks."""
        self.ease.fit(users, items)
        self._gram = self.ease.gram()
        return self

    def side_gram(self) -> torch.Tensor:
        """m F F^T: the text gram scaled by the mean training interactions per item. (n_items, n_items) float64"""
        unit = self.unit_i.double()
        return torch.diagonal(self._gram).mean() * (unit @ unit.T)

    def solve(self, side_weight: float) -> None:
        """Re-solve B with the text gram weighted by `side_weight` (0: plain EASE)."""
        gram = self._gram + side_weight * self.side_gram() if side_weight else self._gram
        self.ease.B = ease_weights(gram, self.ease.ease_lambda).float()
        self.side_weight = torch.tensor(float(side_weight))

    def select_on_validation(self, data: PreparedData) -> dict:
        """Pick (a, text match, w) by full-ranking NDCG@10 on the validation split, the metric the comparison is
        judged on. Test data is never read here."""
        mask = full_ranking_mask(data, "valid")
        best, best_metrics = None, None
        for side in self.grid_side:
            self.solve(side)
            for match in self.grid_match:
                for w in self.grid_weight:
                    if w == 0.0 and match != self.grid_match[0]:
                        continue  # w = 0 ignores the match: scored once already
                    self.text_weight = torch.tensor(w)
                    self.match_index = torch.tensor(TEXT_MATCHES.index(match))
                    m = metrics_from_ranks(rank_full(self, data.valid, mask).ranks, [10])
                    if best_metrics is None or m["ndcg@10"] > best_metrics["ndcg@10"]:
                        best, best_metrics = (side, match, w), m
        side, match, w = best
        self.solve(side)
        self._gram = None  # n_items^2 float64, only needed while choosing
        self.text_weight = torch.tensor(w)
        self.match_index = torch.tensor(TEXT_MATCHES.index(match))
        return {**best_metrics, **self.choices()}

    def choices(self) -> dict:
        return {"side_weight": round(float(self.side_weight), 6), "text_match": self.match,
                "text_weight": round(float(self.text_weight), 6)}

    # ------------------------------------------------------------------------------------------------ scoring

    def text_scores(self, users: torch.Tensor) -> torch.Tensor:
        """t_u for every item. (b,) -> (b, n_items)"""
        if self.match == "user_profile":
            return self.unit_u[users] @ self.unit_i.T
        x = self.ease._x(users)  # (b, n_items)
        self_similarity = (self.unit_i * self.unit_i).sum(-1)  # S's diagonal, removed: an item is not its neighbour
        return (x @ self.unit_i) @ self.unit_i.T - x * self_similarity

    def _parts_all(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised item-model and text scores for every item. (b, n_items) each"""
        return standardise(self.ease.score_all(users)), standardise(self.text_scores(users))

    def score_parts_all(self, users: torch.Tensor) -> dict[str, torch.Tensor]:
        """Both score parts for every item; they sum to `score_all`. (b,) -> {name: (b, n_items)}"""
        item_model, text = self._parts_all(users)
        return {"item_model": item_model, "text_match": self.text_weight * text}

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        parts = self.score_parts_all(users)
        return parts["item_model"] + parts["text_match"]

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return score_via_all(self, users, items)

    def score_parts(self, users: torch.Tensor, items: torch.Tensor) -> dict[str, torch.Tensor]:
        distinct, row = torch.unique(users, return_inverse=True)
        item_model, text = self._parts_all(distinct)
        return {"item_model": item_model[row, items], "text_match": self.text_weight * text[row, items]}
