"""Top-K recommendations: retrieve candidates, re-rank with a trained model, explain each pick.

Candidates for a user are
  - the nearest items to the user's profile in the cache's FAISS index over item profiles (`items.faiss`), when
    the model reads a cache (the profile is the one the model sees, so the shuffle ablation retrieves with the
    shuffled profile), plus
  - the `popular_fallback` most popular training items, so users with no (or unhelpful) reviews still get a list.
Models without a cache, models that score whole rows anyway (`ranks_whole_catalogue`, e.g. the EASE-based bert_rs,
whose collaborative picks need not be near the user's profile), and users whose pool runs short of K new items are
scored against every item instead.

Every item with a known interaction of the user (train, valid or test) is removed before ranking: a
recommendation is never something the user already has. Each pick carries its score parts (for the fusion ranker:
w_s^T l_s, w_g^T l_g, w_m^T l_m and the bias, which sum to the logit; for bert_rs: item model and text match).
A model that can give its parts for every item (`score_parts_all`) is scored once per user: the parts are summed to
rank, so a request never computes the catalogue twice (once to rank, once to explain).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce
from operator import add
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from pipeline.data.prepared import PreparedData
from pipeline.embeddings import index as item_index
from pipeline.embeddings.cache import INDEX_FILE, Profiles
from pipeline.io import DataError
from pipeline.ranking.evaluation.evaluate import model_device
from pipeline.ranking.training.sampling import PairSet


MAX_K = 1000  # a list longer than this is a mistake, not a recommendation


def check_k(k: object, n_items: int | None = None, name: str = "--k") -> int:
    """A list length must be a whole number in 1..MAX_K; 0 and negatives are errors, never a silent default."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise DataError(f"{name}: must be a whole number of items, got {k!r}")
    if not 1 <= k <= MAX_K:
        raise DataError(f"{name}: must lie in 1..{MAX_K}, got {k}")
    return int(k)


def resolve_prepared_path(model_dir: str | Path, default: str | Path, override: str | Path | None = None) -> Path:
    """The prepared-data folder for a model: `override` when given, else `default` relative to the working folder
    or to any folder above the model folder (the project root of data/models/<run>)."""
    if override is not None:
        return Path(override)
    default = Path(default)
    tried = [default]
    if not default.is_absolute():
        tried += [parent / default for parent in Path(model_dir).resolve().parents]
    for path in tried:
        if path.is_dir():
            return path
    raise DataError(
        f"prepared-data folder {str(default)!r} not found; looked in " + ", ".join(str(p) for p in tried[:4])
        + ". Pass it explicitly (--prepared)."
    )


def user_indices(data: PreparedData, user_ids: Sequence[str], source: str | Path | None = None,
                 lines: Sequence[int] | None = None) -> np.ndarray:
    """Raw user ids -> indices; an unknown id is a `DataError` naming it, and the file and line it came from where
    the ids were read from one (`source`, `lines`: each id's line number)."""
    lookup = {uid: i for i, uid in enumerate(data.user_ids)}
    missing = [n for n, u in enumerate(user_ids) if u not in lookup]
    if missing:
        where = f"{source}:{lines[missing[0]]}: " if source is not None and lines is not None else ""
        raise DataError(f"{where}unknown user id {user_ids[missing[0]]!r} ({len(missing)} unknown in all): not in "
                        f"{data.root / 'users.parquet'}")
    return np.asarray([lookup[u] for u in user_ids], dtype=np.int64)


def known_pairs(data: PreparedData) -> PairSet:
    """Every (user, item) with a known interaction in any split."""
    parts = (data.train, data.valid, data.test)
    return PairSet(
        np.concatenate([p.users for p in parts]), np.concatenate([p.items for p in parts]), data.n_users, data.n_items
    )


def popular_items(data: PreparedData, n: int) -> np.ndarray:
    """The n items with most training interactions, most popular first (stable order for ties)."""
    counts = np.bincount(data.train.items, minlength=data.n_items)
    return np.argsort(-counts, kind="stable")[: max(0, min(n, data.n_items))]


def read_index(cache_path: str | Path):
    """The cache's FAISS index over item profiles (the cache's contract; the ranker never imports pipeline.text)."""
    return item_index.read_index(Path(cache_path) / INDEX_FILE)


def faiss_candidates(index, queries: np.ndarray, n: int) -> np.ndarray:
    """Nearest item indices per query vector, (b, d) -> (b, n), -1 where the index has fewer items.

    Queries are L2-normalised: for an inner-product index this leaves each user's ranking unchanged, and for a
    cosine index (normalised item vectors, inner product) it is what cosine needs.
    """
    _, found = item_index.search(index, queries, n, metric="cosine")
    return found.astype(np.int64)


def _dedupe(pool: np.ndarray) -> np.ndarray:
    """Sort each row and replace repeated items by -1. (b, c) -> (b, c)"""
    pool = np.sort(pool, axis=1)
    repeat = np.zeros(pool.shape, bool)
    repeat[:, 1:] = pool[:, 1:] == pool[:, :-1]
    return np.where(repeat, -1, pool)


@dataclass(frozen=True)
class Picks:
    """Top-k lists as arrays, one row per user: what a table or an HTTP response is built from."""

    users: np.ndarray  # (b,) int64 user indices
    items: np.ndarray  # (b, k) int64, best first, -1 past the end of a short list
    scores: np.ndarray  # (b, k) float64 holding float32 scores, -inf past the end
    parts: dict[str, np.ndarray]  # name -> (b, k) float32 score parts that sum to the score, NaN past the end


def recommend(
    model: nn.Module,
    data: PreparedData,
    users: np.ndarray,
    k: int = 10,
    candidates: int = 100,
    popular_fallback: int = 100,
    profiles: Profiles | None = None,
    index=None,
    batch_users: int = 512,
    known: PairSet | None = None,
    popular: np.ndarray | None = None,
) -> pa.Table:
    """Top-k new items for each user index, with score parts; one row per (user, rank)."""
    model.eval()
    device = model_device(model)
    known = known if known is not None else known_pairs(data)
    popular = popular if popular is not None else popular_items(data, popular_fallback)
    tables = []
    for start in range(0, len(users), batch_users):
        batch = np.asarray(users[start : start + batch_users], dtype=np.int64)
        tables.append(_to_table(data, top_k(model, batch, k, known, popular, candidates, profiles, index, device)))
    if not tables:
        return _to_table(data, Picks(np.zeros(0, np.int64), np.zeros((0, k), np.int64), np.zeros((0, k)), {}))
    return pa.concat_tables(tables)


@torch.inference_mode()
def top_k(
    model: nn.Module,
    batch: np.ndarray,
    k: int,
    known: PairSet,
    popular: np.ndarray,
    n_candidates: int = 100,
    profiles: Profiles | None = None,
    index=None,
    device: torch.device | None = None,
) -> Picks:
    """The top-k new items of each user in `batch` with their scores and score parts (the model in eval mode).

    A model with `score_parts_all` scores a user's whole catalogue once: the ranked score is the sum of the parts,
    so the parts shown next to a pick are the very numbers it was ranked by. Other models rank with `score` /
    `score_all` and then explain the k picks with `score_parts`.
    """
    device = device if device is not None else model_device(model)
    b = len(batch)
    if index is not None and profiles is not None and not model.ranks_whole_catalogue:
        pool = np.concatenate(
            [faiss_candidates(index, profiles.users[batch], n_candidates), np.broadcast_to(popular, (b, len(popular)))],
            axis=1,
        )
        pool = _dedupe(pool)  # (b, c)
        ok = (pool >= 0) & ~known.contains(batch[:, None], np.maximum(pool, 0))
        pool = np.where(ok, pool, -1)
    else:
        pool = np.zeros((b, 0), np.int64)
    short = (pool >= 0).sum(axis=1) < k  # these users are scored against every item
    items = np.full((b, k), -1, np.int64)
    scores = np.full((b, k), -np.inf)
    parts: dict[str, np.ndarray] = {}
    explained = np.zeros(b, bool)  # rows whose parts came with their scores
    if (~short).any():
        rows = np.flatnonzero(~short)
        p = torch.as_tensor(pool[rows], device=device)  # (r, c)
        u = torch.as_tensor(batch[rows], device=device)
        s = model.score(u.repeat_interleave(p.shape[1]), p.clamp(min=0).reshape(-1)).reshape(p.shape).float()
        s = s.masked_fill(p < 0, -torch.inf)
        top = s.topk(k, dim=1)
        items[rows] = p.gather(1, top.indices).cpu().numpy()
        scores[rows] = top.values.cpu().numpy()
    if short.any():
        rows = np.flatnonzero(short)
        u = torch.as_tensor(batch[rows], device=device)
        parts_all = model.score_parts_all(u)  # {name: (r, n_items)}, or None
        s = (reduce(add, parts_all.values()) if parts_all else model.score_all(u)).float()  # (r, n_items)
        s = s.masked_fill(known.dense_mask(batch[rows]).to(device), -torch.inf)
        top = s.topk(min(k, s.shape[1]), dim=1)
        width = top.indices.shape[1]
        items[rows, :width] = top.indices.cpu().numpy()
        scores[rows, :width] = top.values.cpu().numpy()
        if parts_all:
            for name, value in parts_all.items():
                parts.setdefault(name, np.full((b, k), np.nan, np.float32))[rows, :width] = (
                    value.float().gather(1, top.indices).cpu().numpy())
            explained[rows] = True
    items = np.where(np.isfinite(scores), items, -1)  # a user who has every item gets a shorter list
    rows, ranks = np.nonzero((items >= 0) & ~explained[:, None])
    if len(rows):
        pairs = model.score_parts(torch.as_tensor(batch[rows], device=device),
                                  torch.as_tensor(items[rows, ranks], device=device))
        for name, value in pairs.items():
            parts.setdefault(name, np.full((b, k), np.nan, np.float32))[rows, ranks] = value.float().cpu().numpy()
    for value in parts.values():
        value[items < 0] = np.nan
    return Picks(users=batch, items=items, scores=scores, parts=parts)


def _to_table(data: PreparedData, picks: Picks) -> pa.Table:
    rows, ranks = np.nonzero(picks.items >= 0)
    u, i = picks.users[rows], picks.items[rows, ranks]
    columns = {
        "user_idx": pa.array(u, pa.int32()),
        "user_id": pa.array([data.user_ids[x] for x in u], pa.string()),
        "rank": pa.array(ranks + 1, pa.int32()),
        "item_idx": pa.array(i, pa.int32()),
        "item_id": pa.array([data.item_ids[x] for x in i], pa.string()),
        "item_title": pa.array([data.item_titles[x] if data.item_titles else None for x in i], pa.string()),
        "score": pa.array(picks.scores[rows, ranks], pa.float32()),
    }
    for name, value in picks.parts.items() if len(u) else ():
        columns[f"part_{name}"] = pa.array(value[rows, ranks], pa.float32())
    return pa.table(columns)
