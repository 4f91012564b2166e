"""EASE + text: the strongest collaborative baseline with the zero-shot text match added late.

    score(u, i) = z_u(EASE(u, i)) + w * z_u(cos(b_u - mu_u, b_i - mu_i))

z_u standardises a user's scores over all items, so that w is comparable across users. w is picked from a fixed
grid by full-ranking NDCG@10 on the validation split only; w = 0 is EASE itself, so on validation the hybrid can
only match or beat EASE.
This is the "text-similarity feature" fusion of issue 7 in its simplest form: if review text carries a signal the
item-item model misses, this is where it shows, and the shuffled-profile ablation removes it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.data.prepared import PreparedData
from pipeline.embeddings.cache import Profiles
from pipeline.ranking.baselines import EASE, score_via_all
from pipeline.ranking.evaluate import full_ranking_mask, rank_full
from pipeline.ranking.metrics import metrics_from_ranks


def standardise(scores: torch.Tensor) -> torch.Tensor:
    """Per-row z-score. (b, n) -> (b, n)"""
    return (scores - scores.mean(-1, keepdim=True)) / (scores.std(-1, keepdim=True) + 1e-8)


class EaseText(nn.Module):
    trainable = False

    def __init__(
        self, n_users: int, n_items: int, profiles: Profiles, ease_lambda: float, weights: Sequence[float]
    ) -> None:
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.ease = EASE(n_users, n_items, ease_lambda)
        self.grid = [float(w) for w in weights]
        self.register_buffer("weight", torch.tensor(0.0))  # the chosen w, saved in the checkpoint
        users = torch.tensor(profiles.users, dtype=torch.float32)
        items = torch.tensor(profiles.items, dtype=torch.float32)
        self.register_buffer("unit_u", F.normalize(users - users.mean(0), dim=-1, eps=1e-8), persistent=False)
        self.register_buffer("unit_i", F.normalize(items - items.mean(0), dim=-1, eps=1e-8), persistent=False)

    def fit(self, users: np.ndarray, items: np.ndarray) -> "EaseText":
        self.ease.fit(users, items)
        return self

    def _parts_all(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Standardised EASE and text scores for every item. (b, n_items) each"""
        return standardise(self.ease.score_all(users)), standardise(self.unit_u[users] @ self.unit_i.T)

    def select_weight(self, data: PreparedData) -> dict:
        """Pick w by full-ranking NDCG@10 on the validation split (the metric the comparison is judged on)."""
        mask = full_ranking_mask(data, "valid")
        best, best_metrics = None, None
        for w in self.grid:
            self.weight = torch.tensor(float(w))
            m = metrics_from_ranks(rank_full(self, data.valid, mask).ranks, [10])
            if best_metrics is None or m["ndcg@10"] > best_metrics["ndcg@10"]:
                best, best_metrics = w, m
        self.weight = torch.tensor(float(best))
        return {**best_metrics, "text_weight": float(best)}

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        ease, text = self._parts_all(users)
        return ease + self.weight * text

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return score_via_all(self, users, items)

    def score_parts(self, users: torch.Tensor, items: torch.Tensor) -> dict[str, torch.Tensor]:
        distinct, row = torch.unique(users, return_inverse=True)
        ease, text = self._parts_all(distinct)
        return {"ease": ease[row, items], "semantic": self.weight * text[row, items]}
