"""The embedding cache contract: what `embed` writes and what the ranker reads.

A cache is a folder:

    reviews.parquet        review_id, user_idx, item_idx, split, embedding (fixed-size list<float32>[dim])
    user_profiles.parquet  user_idx, embedding, n_reviews, has_reviews   (one row per user, in index order)
    item_profiles.parquet  item_idx, embedding, n_reviews, has_reviews   (one row per item, in index order)
    items.faiss            FAISS index over the item profiles
    meta.json              provenance (also stored in each Parquet file's schema metadata under b"bertrs")

Profiles are built from training-split reviews only; `has_reviews` is False where a user or item has none and
its vector is the fallback (the mean of all training review vectors). The ranker depends on this module, never
on `pipeline.text`, which is what makes caches swappable. Importing it costs pyarrow and numpy only: the code that
encodes and assembles caches (torch, transformers, FAISS) lives in `pipeline.embeddings.writer` and `build`, the
pass that weighs each user's reviews by recency in `pipeline.embeddings.recency`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.embeddings.profiles import ProfileTables
from pipeline.io import DataError, read_json, read_table

META_FILE = "meta.json"
REVIEWS_FILE = "reviews.parquet"
USER_PROFILES_FILE = "user_profiles.parquet"
ITEM_PROFILES_FILE = "item_profiles.parquet"
INDEX_FILE = "items.faiss"
META_KEY = b"bertrs"

# provenance keys every cache's meta.json carries
META_FIELDS = (
    "encoder",  # name or path the weights came from
    "weights_fingerprint",  # hash of the encoder's weight files
    "pooling",  # pooler | mean | cls
    "max_length",
    "dim",
    "data_fingerprint",  # fingerprint of the prepared data (stats.json "fingerprint")
    "profile",  # how reviews are pooled into profiles
    "versions",  # library versions
)  # no timestamp: the same inputs must give byte-identical files, or every DVC clone would see a new cache


def reviews_schema(dim: int, meta: dict | None = None) -> pa.Schema:
    """The schema of a cache's `reviews.parquet`: review_id, user_idx, item_idx, split and a fixed-size
    list<float32>[dim] `embedding`; `meta`, where given, is stored as JSON in the schema metadata under META_KEY."""
    schema = pa.schema(
        [
            pa.field("review_id", pa.int64(), nullable=False),
            pa.field("user_idx", pa.int32(), nullable=False),
            pa.field("item_idx", pa.int32(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        ]
    )
    return _with_meta(schema, meta)


def profile_schema(kind: str, dim: int, meta: dict | None = None) -> pa.Schema:
    """The schema of a cache's `<kind>_profiles.parquet` (`kind` "user" or "item"): `<kind>_idx`, a fixed-size
    list<float32>[dim] `embedding`, `n_reviews` and `has_reviews`; `meta`, where given, is stored as JSON in the schema
    metadata under META_KEY."""
    schema = pa.schema(
        [
            pa.field(f"{kind}_idx", pa.int32(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
            pa.field("n_reviews", pa.int32(), nullable=False),  # training reviews pooled into this profile
            pa.field("has_reviews", pa.bool_(), nullable=False),  # False: the vector is the fallback
        ]
    )
    return _with_meta(schema, meta)


def _with_meta(schema: pa.Schema, meta: dict | None) -> pa.Schema:
    return schema if meta is None else schema.with_metadata({META_KEY: json.dumps(meta).encode()})


def vectors_to_arrow(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """(n, dim) float32 -> fixed-size list array without a Python loop."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


def arrow_to_vectors(column: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    """Fixed-size list column -> (n, dim) float32."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)


@dataclass(frozen=True)
class Profiles:
    """Review-derived semantic profiles b_u and b_i, as the ranker consumes them."""

    users: np.ndarray  # (n_users, dim) float32
    items: np.ndarray  # (n_items, dim) float32
    user_has_reviews: np.ndarray  # (n_users,) bool
    item_has_reviews: np.ndarray  # (n_items,) bool
    meta: dict
    # (n_users, dim) float32: the same training reviews weighted by recency (`with_recent_users`); None until asked
    recent_users: np.ndarray | None = None
    # the same profiles with each user's newest training review left out (`with_recent_users(..., lagged=True)`;
    # items unchanged): what bert_rs chooses its text settings with when test lags the profiles (profiles.py)
    lagged: "Profiles | None" = None

    @classmethod
    def from_tables(cls, tables: ProfileTables, meta: dict) -> "Profiles":
        """The profiles of in-memory `ProfileTables` (`mean_profiles`), with their lagged view where they have one."""
        lagged = None
        if tables.lagged_users is not None:
            lagged = cls(tables.lagged_users, tables.items, tables.user_counts > 0, tables.item_counts > 0, meta,
                         tables.lagged_recent_users)
        return cls(tables.users, tables.items, tables.user_counts > 0, tables.item_counts > 0, meta,
                   tables.recent_users, lagged)

    @property
    def dim(self) -> int:
        """The profiles' vector dimension."""
        return int(self.users.shape[1])

    @property
    def fingerprint(self) -> str:
        """Identifies the cache: same encoder weights, pooling and data give the same fingerprint."""
        keys = ("weights_fingerprint", "pooling", "max_length", "dim", "data_fingerprint", "profile")
        return "-".join(str(self.meta.get(k)) for k in keys)


def read_meta(root: str | Path) -> dict:
    """A cache folder's `meta.json`; a missing file or a missing provenance field (META_FIELDS) raises `DataError`."""
    root = Path(root)
    if not (root / META_FILE).is_file():
        raise DataError(f"{root}: not an embedding cache ({META_FILE} missing; has `bertrs embed` finished?)")
    meta = read_json(root / META_FILE)
    missing = [key for key in META_FIELDS if key not in meta]
    if missing:
        raise DataError(f"{root / META_FILE}: provenance field(s) missing: {missing}")
    return meta


def check_meta(meta: dict, where: str, *, data_fingerprint: str | None = None, dim: int | None = None) -> None:
    """Refuse a cache built from other data or with another dimension, saying what differs."""
    if data_fingerprint is not None and meta["data_fingerprint"] != data_fingerprint:
        raise DataError(
            f"{where}: embedding cache was computed from other prepared data "
            f"(cache data_fingerprint {meta['data_fingerprint']}, expected {data_fingerprint}); "
            "rerun `bertrs embed` on this data"
        )
    if dim is not None and int(meta["dim"]) != int(dim):
        raise DataError(f"{where}: embedding dimension {meta['dim']} differs from the expected {dim}")


def load_profiles(
    root: str | Path,
    *,
    data_fingerprint: str | None = None,
    n_users: int | None = None,
    n_items: int | None = None,
    dim: int | None = None,
) -> Profiles:
    """Read and validate a cache's profiles against what the caller expects (data, sizes, dimension)."""
    root = Path(root)
    meta = read_meta(root)
    check_meta(meta, str(root), data_fingerprint=data_fingerprint, dim=dim)
    d = int(meta["dim"])
    parts = {}
    for kind, name, expected in (("user", USER_PROFILES_FILE, n_users), ("item", ITEM_PROFILES_FILE, n_items)):
        table = read_table(root / name, profile_schema(kind, d))
        index = table.column(f"{kind}_idx").to_numpy()
        if not np.array_equal(index, np.arange(len(index))):
            raise DataError(f"{root / name}: {kind}_idx must be 0..n-1 in order")
        if expected is not None and len(index) != expected:
            raise DataError(f"{root / name}: {len(index)} {kind}s in the cache, the prepared data has {expected}")
        parts[kind] = (arrow_to_vectors(table.column("embedding"), d), table.column("has_reviews").to_numpy())
    return Profiles(
        users=parts["user"][0],
        items=parts["item"][0],
        user_has_reviews=parts["user"][1],
        item_has_reviews=parts["item"][1],
        meta=meta,
    )


def load_review_embeddings(
    root: str | Path, *, data_fingerprint: str | None = None, dim: int | None = None
) -> tuple[pa.Table, np.ndarray]:
    """(review_id, user_idx, item_idx, split) table and (n, dim) vectors of a cache, checked like `load_profiles`."""
    root = Path(root)
    meta = read_meta(root)
    check_meta(meta, str(root), data_fingerprint=data_fingerprint, dim=dim)
    d = int(meta["dim"])
    table = read_table(root / REVIEWS_FILE, reviews_schema(d))
    return table.drop_columns(["embedding"]), arrow_to_vectors(table.column("embedding"), d)


def cache_info(root: str | Path) -> dict:
    """Provenance and sizes of a cache, for `bertrs cache info`."""
    root = Path(root)
    meta = read_meta(root)
    files = {}
    for name in (REVIEWS_FILE, USER_PROFILES_FILE, ITEM_PROFILES_FILE, INDEX_FILE, META_FILE):
        path = root / name
        entry: dict = {"bytes": path.stat().st_size if path.is_file() else None}
        if path.suffix == ".parquet" and path.is_file():
            md = pq.ParquetFile(path).metadata
            entry.update(rows=md.num_rows, row_groups=md.num_row_groups)
            stored = pq.read_schema(path).metadata or {}
            entry["meta_matches"] = json.loads(stored.get(META_KEY, b"{}")) == meta
        files[name] = entry
    return {"path": str(root), "meta": meta, "files": files}
