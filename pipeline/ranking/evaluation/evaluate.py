"""Sampled and full-ranking evaluation of any scorer (`score`, `score_all`), batched as tensors.

Sampled protocol (NCF, the paper's Table 2): each held-out positive against its stored candidate negatives from
`candidates.parquet`; -1 padding cells are ignored. Known to be biased (Krichene and Rendle, KDD 2020), hence:

Full-ranking protocol: each held-out positive against every item the user has no known positive with. Masked out
of the competitors (never counted above the positive):
  - the user's training items (they are not recommendable);
  - the user's other held-out positives of the same split (they are correct answers, not mistakes);
  - when ranking TEST with `mask_other_splits` (default), the user's validation positives too: they are known
    positives by the time the test split is read.
Ranking VALIDATION never reads the test split: masking a user's test item there would take it out of the
competition, and every choice made on validation would then have seen the test positives.
Ranks use the pessimistic tie rule of `pipeline.ranking.evaluation.metrics`.

Which split is evaluated is the caller's choice: training calls this on "valid" only; reported numbers use "test".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from pipeline.data.prepared import Candidates, Interactions, PreparedData
from pipeline.ranking.evaluation.metrics import metrics_from_ranks, rank_against
from pipeline.ranking.protocol import Scorer
from pipeline.ranking.training.sampling import PairSet

BUCKETS = (("0", 0, 0), ("1-3", 1, 3), ("4-10", 4, 10), (">10", 11, None))  # training interactions per user


@dataclass(frozen=True)
class Ranked:
    """Ranks of every held-out positive of one split under one protocol."""

    users: np.ndarray  # (n,) int64
    items: np.ndarray  # (n,) int64
    ranks: np.ndarray  # (n,) int64, 0-based, pessimistic ties


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer; the CPU for a model that has neither."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


@torch.no_grad()
def rank_sampled(model: nn.Module, candidates: Candidates, batch_size: int = 1024) -> Ranked:
    """Rank each positive among its stored negatives (-1 padding ignored)."""
    model.eval()
    device = model_device(model)
    ranks = []
    for start in range(0, len(candidates.users), batch_size):
        users = torch.as_tensor(candidates.users[start : start + batch_size], device=device)  # (b,)
        pos = torch.as_tensor(candidates.items[start : start + batch_size], device=device)  # (b,)
        neg = torch.as_tensor(candidates.negatives[start : start + batch_size], device=device)  # (b, m)
        valid = neg >= 0
        b, m = neg.shape
        items = torch.cat([pos[:, None], neg.clamp(min=0)], dim=1)  # (b, 1 + m)
        scores = model.score(users.repeat_interleave(1 + m), items.reshape(-1)).reshape(b, 1 + m).float()
        ranks.append(rank_against(scores[:, 0], scores[:, 1:], valid).cpu().numpy())
    return Ranked(candidates.users, candidates.items, _cat(ranks))


@torch.no_grad()
def rank_full(
    model: nn.Module,
    heldout: Interactions,
    masked: PairSet,
    batch_users: int = 256,
    batch_items: int | None = None,
) -> Ranked:
    """Rank each held-out positive among all items, excluding the pairs in `masked` (which must contain every
    held-out positive of this split, and the training pairs). Scores are computed per (user batch, item chunk), so
    no dense matrix is larger than batch_users x batch_items (None: chunks of about CHUNK_CELLS cells); with one
    chunk this is one `score_all` call per user batch, with several the rank is counted chunk by chunk."""
    model.eval()
    device = model_device(model)
    order = np.argsort(heldout.users, kind="stable")
    users_sorted, items_sorted = heldout.users[order], heldout.items[order]
    batch_of_users = np.unique(users_sorted)
    ranks = np.empty(len(order), dtype=np.int64)
    for start in range(0, len(batch_of_users), batch_users):
        batch = batch_of_users[start : start + batch_users]  # (b,)
        lo = np.searchsorted(users_sorted, batch[0], side="left")
        hi = np.searchsorted(users_sorted, batch[-1], side="right")
        rows = np.searchsorted(batch, users_sorted[lo:hi])  # (p,)
        chunk = batch_items or max(1, CHUNK_CELLS // len(batch))
        ranks[lo:hi] = rank_chunked(model, batch, rows, items_sorted[lo:hi], masked, chunk, device)
    out = np.empty_like(ranks)
    out[order] = ranks
    return Ranked(heldout.users, heldout.items, out)


CHUNK_CELLS = 2**24  # scores held at once in full ranking (64 MB of float32) when batch_items is not given


def score_item_slice(model: Scorer, users: torch.Tensor, item_slice: slice) -> torch.Tensor:
    """Scores of a user batch against items[item_slice] (`Scorer.score_items`: bounded memory where the model can
    score a slice, else a slice of its whole row). (b,) -> (b, slice length)"""
    return model.score_items(users, item_slice)


def rank_chunked(
    model: nn.Module,
    batch: np.ndarray,
    rows: np.ndarray,
    items: np.ndarray,
    masked: PairSet,
    chunk: int,
    device: torch.device,
) -> np.ndarray:
    """Pessimistic ranks of positives (rows[j] indexes `batch`, items[j] the item) over item chunks of `chunk`:
    one pass reads each positive's score from its chunk, a second counts unmasked competitors scoring >= it.
    With a single chunk both passes share one score matrix. (p,) -> (p,) int64"""
    n_items = masked.n_items
    users_t = torch.as_tensor(batch, device=device)
    rows_t = torch.as_tensor(rows, device=device)
    items_t = torch.as_tensor(items, device=device)
    # the batch's masked pairs as (row, item) lists, cut per chunk below instead of a (b, n_items) mask
    starts, ends = masked.indptr[batch], masked.indptr[batch + 1]
    lengths = ends - starts
    mask_rows = np.repeat(np.arange(len(batch)), lengths)
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    mask_cols = masked.indices[np.repeat(starts, lengths) + offsets]
    bounds = [(lo, min(lo + chunk, n_items)) for lo in range(0, n_items, chunk)]
    cached: dict[int, torch.Tensor] = {}

    def scores_of(lo: int, hi: int) -> torch.Tensor:
        if lo in cached:
            return cached[lo]
        scores = score_item_slice(model, users_t, slice(lo, hi)).float()  # (b, hi - lo)
        if len(bounds) == 1:
            cached[lo] = scores
        return scores

    positive = torch.empty(len(rows), device=device)
    for lo, hi in bounds:
        inside = (items_t >= lo) & (items_t < hi)
        if inside.any():
            positive[inside] = scores_of(lo, hi)[rows_t[inside], items_t[inside] - lo]
    ranks = torch.zeros(len(rows), dtype=torch.int64, device=device)
    for lo, hi in bounds:
        competitors = torch.ones((len(batch), hi - lo), dtype=torch.bool)
        keep = (mask_cols >= lo) & (mask_cols < hi)
        competitors[torch.as_tensor(mask_rows[keep]), torch.as_tensor(mask_cols[keep] - lo)] = False
        competitors = competitors.to(device)
        ranks += rank_against(positive, scores_of(lo, hi)[rows_t], competitors[rows_t])
    return ranks.cpu().numpy()


def full_ranking_mask(data: PreparedData, split: str, mask_other_splits: bool = True) -> PairSet:
    """Pairs excluded from the full-ranking competitors of `split` (see the module docstring): training pairs and
    the split's own positives; for "test" also the validation positives. "valid" never touches `data.test`."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    parts = [data.train, getattr(data, split)]
    if mask_other_splits and split == "test":
        parts.append(data.valid)
    users = np.concatenate([p.users for p in parts])
    items = np.concatenate([p.items for p in parts])
    return PairSet(users, items, data.n_users, data.n_items)


def activity_bucket(train_counts: np.ndarray) -> np.ndarray:
    """Label each user by their number of training interactions. (n_users,) -> (n_users,) str"""
    labels = np.empty(len(train_counts), dtype=object)
    for name, lo, hi in BUCKETS:
        labels[(train_counts >= lo) & ((train_counts <= hi) if hi is not None else True)] = name
    return labels


def bucket_metrics(ranked: Ranked, train_counts: np.ndarray, ks: Sequence[int]) -> dict[str, dict[str, float]]:
    """Metrics per user-activity bucket (empty buckets are left out)."""
    labels = activity_bucket(train_counts)[ranked.users]
    return {
        name: metrics_from_ranks(ranked.ranks[labels == name], ks)
        for name, _, _ in BUCKETS
        if (labels == name).any()
    }


def evaluate(
    model: nn.Module,
    data: PreparedData,
    split: str,
    ks: Sequence[int] = (1, 3, 5, 10),
    protocols: Sequence[str] = ("sampled", "full"),
    batch_users: int = 256,
    mask_other_splits: bool = True,
) -> dict:
    """{protocol: {"hr@K", "ndcg@K", "n"}, "buckets": {protocol: {bucket: metrics}}} for one split."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    train_counts = np.bincount(data.train.users, minlength=data.n_users)
    out: dict = {"buckets": {}}
    for protocol in protocols:
        if protocol == "sampled":
            ranked = rank_sampled(model, data.candidates[split])
        elif protocol == "full":
            mask = full_ranking_mask(data, split, mask_other_splits)
            ranked = rank_full(model, getattr(data, split), mask, batch_users)
        else:
            raise ValueError(f"unknown protocol {protocol!r} (sampled | full)")
        out[protocol] = metrics_from_ranks(ranked.ranks, ks)
        out["buckets"][protocol] = bucket_metrics(ranked, train_counts, ks)
    return out


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
