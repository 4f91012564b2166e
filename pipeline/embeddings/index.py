"""FAISS index over item profiles, for candidate retrieval before re-ranking.

Exact search (`IndexFlatIP`): item sets here are thousands, not millions, so exactness costs little. Metric "ip"
scores by inner product; "cosine" normalises items when building and queries when searching, so the same inner
product index returns cosine similarity.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from pipeline.io import DataError, atomic_path

METRICS = ("ip", "cosine")


def _prepare(vectors: np.ndarray, metric: str) -> np.ndarray:
    if metric not in METRICS:
        raise DataError(f"index metric {metric!r} is not one of {METRICS}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32).copy()
    if metric == "cosine":
        faiss.normalize_L2(vectors)
    return vectors


def build_index(items: np.ndarray, metric: str = "cosine") -> faiss.Index:
    """Exact inner-product index whose ids are item indices 0..n-1."""
    vectors = _prepare(items, metric)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def write_index(index: faiss.Index, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def read_index(path: str | Path) -> faiss.Index:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: FAISS index not found (has `bertrs embed` finished?)")
    return faiss.read_index(str(path))


def search(index: faiss.Index, queries: np.ndarray, k: int, metric: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, item indices), each (n_queries, k); k is capped at the number of items."""
    queries = _prepare(np.atleast_2d(queries), metric)
    if queries.shape[1] != index.d:
        raise DataError(f"query dimension {queries.shape[1]} differs from the index dimension {index.d}")
    scores, ids = index.search(queries, min(k, index.ntotal))
    return scores, ids
