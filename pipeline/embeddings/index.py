"""FAISS index over item profiles, for candidate retrieval before re-ranking.

The index type follows the catalogue (`index_type: auto`): below `exact_below` items an exact `IndexFlatIP` (a
few thousand items cost nothing to scan, and exactness is free); at or above it HNSW for the cosine metric (IVF for
"ip", whose graph would be linked by a non-metric score), because a flat scan of 1M x 384 floats per query is
~0.4 G multiply-adds:

    hnsw   IndexHNSWFlat: a proximity graph (hnsw_m links per node, built with ef_construction candidates),
           searched with ef_search candidates. The default at catalogue size: on benchmarks/retrieval.py's
           clustered vectors it is the type that reaches recall@100 >= 0.95 within 10 ms a query; a wide build
           (ef_construction 200, not FAISS's 40) buys most of that recall, paid once in build time. The build
           inserts on all cores, and FAISS does not promise identical links from two parallel builds.
    ivf    IndexIVFFlat: k-means cells (nlist, default 2 sqrt(n)), a query scans the nprobe nearest cells.
           Cheaper to build, but cells of overlapping clusters cost it recall (0.73 / 0.78 at nprobe 32 / 64 on 1M
           vectors, where HNSW passes 0.99: retrieval.md).

`nprobe` and `ef_search` are stored in the index file, so a reader searches the way the builder chose.
Metric "ip" scores by inner product; "cosine" normalises items when building and queries when searching, so the
same inner-product index returns cosine similarity. benchmarks/retrieval.py measures recall@100 against exact
search, p99 latency, build time and memory at 1M items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from pipeline.io import DataError, atomic_path

METRICS = ("ip", "cosine")
INDEX_TYPES = ("auto", "flat", "ivf", "hnsw")


@dataclass(frozen=True)
class IndexChoice:
    """How to index a catalogue; the `embed` params section's index_* fields, passed through."""

    index_type: str = "auto"  # auto | flat | ivf | hnsw; auto = flat below exact_below items, then hnsw (cosine)
    exact_below: int = 100_000  # auto picks an exact index for catalogues smaller than this
    nlist: int | None = None  # IVF cells; None = 2 sqrt(n_items)
    nprobe: int = 32  # IVF cells scanned per query
    hnsw_m: int = 32  # HNSW links per node
    ef_search: int = 256  # HNSW candidates kept while searching
    ef_construction: int = 200  # HNSW candidates kept while linking a new node
    train_per_cell: int = 50  # IVF k-means trains on at most nlist x this many vectors (FAISS wants >= 39)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.index_type not in INDEX_TYPES:
            raise DataError(f"embed.index_type: {self.index_type!r} is not one of {INDEX_TYPES}")
        if (self.exact_below < 0 or self.nprobe < 1 or self.hnsw_m < 2 or self.ef_search < 1
                or self.ef_construction < 1):
            raise DataError("embed.index_exact_below must be >= 0, index_nprobe/index_ef_search/"
                            "index_ef_construction >= 1, index_hnsw_m >= 2")

    def resolved_type(self, n_items: int, metric: str = "cosine") -> str:
        """The concrete index type for a catalogue of `n_items` searched by `metric`."""
        if self.index_type != "auto":
            return self.index_type
        if n_items < self.exact_below:
            return "flat"
        return "hnsw" if metric == "cosine" else "ivf"

    def resolved_nlist(self, n_items: int) -> int:
        """The IVF cell count for `n_items` items: `nlist`, or 2 sqrt(n_items) when unset, kept within [1, n_items]."""
        nlist = self.nlist or int(2 * math.sqrt(n_items))
        return max(1, min(nlist, n_items))


def _prepare(vectors: np.ndarray, metric: str) -> np.ndarray:
    if metric not in METRICS:
        raise DataError(f"index metric {metric!r} is not one of {METRICS}")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32).copy()
    if metric == "cosine":
        faiss.normalize_L2(vectors)
    return vectors


def build_index(items: np.ndarray, metric: str = "cosine", choice: IndexChoice | None = None) -> faiss.Index:
    """Inner-product index whose ids are item indices 0..n-1; exact unless `choice` says otherwise."""
    choice = choice or IndexChoice(index_type="flat")
    vectors = _prepare(items, metric)
    n, dim = vectors.shape
    kind = choice.resolved_type(n, metric)
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        # HNSW's graph assumes a metric; inner product is not one (recall ~0.88 where L2 gets ~1.0 in
        # tests/test_index.py), so unit vectors are linked by L2, whose order is the cosine order
        graph_metric = faiss.METRIC_L2 if metric == "cosine" else faiss.METRIC_INNER_PRODUCT
        index = faiss.IndexHNSWFlat(dim, choice.hnsw_m, graph_metric)
        index.hnsw.efConstruction = choice.ef_construction
        index.hnsw.efSearch = choice.ef_search
    else:
        nlist = choice.resolved_nlist(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = min(n, nlist * choice.train_per_cell)
        rows = np.random.default_rng(choice.seed).choice(n, size=sample, replace=False) if sample < n else slice(None)
        index.cp.seed = choice.seed
        index.cp.spherical = True  # unit centroids: inner-product assignment would favour long centroids
        index.train(vectors[rows])
        index.nprobe = min(choice.nprobe, nlist)
    index.add(vectors)
    return index


def index_type(index: faiss.Index) -> str:
    """flat | ivf | hnsw, read back from a built or loaded index."""
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, faiss.IndexIVF):
        return "ivf"
    return "flat"


def write_index(index: faiss.Index, path: str | Path) -> None:
    """Write a FAISS index to `path` atomically."""
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def read_index(path: str | Path) -> faiss.Index:
    """Read a FAISS index written by `write_index`; a missing file raises `DataError`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: FAISS index not found (has `bertrs embed` finished?)")
    return faiss.read_index(str(path))


def search(index: faiss.Index, queries: np.ndarray, k: int, metric: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """Top-k (scores, item indices), each (n_queries, k); k is capped at the number of items. An approximate index
    may return fewer than k hits for a query (FAISS pads with id -1)."""
    queries = _prepare(np.atleast_2d(queries), metric)
    if queries.shape[1] != index.d:
        raise DataError(f"query dimension {queries.shape[1]} differs from the index dimension {index.d}")
    scores, ids = index.search(queries, min(k, index.ntotal))
    if index.metric_type == faiss.METRIC_L2:  # unit vectors: |q - x|^2 = 2 - 2 cos, back to cosine
        scores = 1.0 - scores / 2.0
    return scores, ids
