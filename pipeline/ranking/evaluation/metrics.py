"""HR@K and NDCG@K from the rank of each held-out positive among its candidates (pure numpy / torch).

Rank convention: 0-based, rank = number of competing candidates whose score is >= the positive's score.

Ties are PESSIMISTIC: a competitor scoring exactly the positive's score ranks above it. A model that gives every
item the same score therefore lands every positive last and earns no credit, instead of the optimistic (rank 0)
or arbitrary (sort-order) credit other conventions give it.

With one relevant item per ranking, HR@K = 1[rank < K] and NDCG@K = 1[rank < K] / log2(rank + 2) (the ideal DCG is
1), so HR@1 = NDCG@1, as in the paper's Table 2.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def rank_against(positive: torch.Tensor, competitors: torch.Tensor, valid: torch.Tensor | None = None,
                 finite: bool = False) -> torch.Tensor:
    """Pessimistic 0-based rank of each positive among its competitors.

    positive: (n,); competitors: (n, m); valid: (n, m) bool, False for padding/masked cells. Returns (n,) int64.
    A NaN score (a diverged model) counts against the positive too, wherever it is: NaN compares False with
    everything, so without this a NaN positive would rank first. `finite`: the caller knows no score is NaN, and
    the two passes that look for one are skipped.
    """
    beats = competitors >= positive[:, None]  # (n, m); ties count against the positive
    if not finite:
        beats |= competitors.isnan() | positive.isnan()[:, None]
    if valid is not None:
        beats &= valid
    return beats.view(torch.uint8).sum(dim=1, dtype=torch.int32).long()  # a bool sum is several times slower


def hit_ratio(ranks: np.ndarray, k: int) -> float:
    """HR@k: the share of 0-based `ranks` below `k`; NaN for no ranks."""
    ranks = np.asarray(ranks)
    return float(np.mean(ranks < k)) if len(ranks) else float("nan")


def ndcg_per_positive(ranks: np.ndarray, k: int) -> np.ndarray:
    """Each positive's NDCG@k from its 0-based rank (one relevant item per positive)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def ndcg(ranks: np.ndarray, k: int) -> float:
    """NDCG@k: the mean of `ndcg_per_positive(ranks, k)`; NaN for no ranks."""
    return float(np.mean(ndcg_per_positive(ranks, k))) if len(ranks) else float("nan")


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """{"hr@K": ..., "ndcg@K": ...} for every K, plus "n" (positives ranked)."""
    out: dict[str, float] = {}
    for k in sorted(ks, reverse=True):
        out[f"hr@{k}"] = hit_ratio(ranks, k)
        out[f"ndcg@{k}"] = ndcg(ranks, k)
    out["n"] = int(len(ranks))
    return out
