"""The embedding cache contract: what `embed` writes and what the ranker reads.

A cache is a folder:

    reviews.parquet        review_id, user_idx, item_idx, split, embedding (fixed-size list<float32>[dim])
    user_profiles.parquet  user_idx, embedding, n_reviews, has_reviews   (one row per user, in index order)
    item_profiles.parquet  item_idx, embedding, n_reviews, has_reviews   (one row per item, in index order)
    items.faiss            FAISS index over the item profiles
    meta.json              provenance (also stored in each Parquet file's schema metadata under b"bertrs")

Profiles are built from training-split reviews only; `has_reviews` is False where a user or item has none and
its vector is the fallback (the mean of all training review vectors). The ranker depends on this module, never
on `pipeline.text`, which is what makes caches swappable.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pipeline.embeddings.index import IndexChoice, build_index, write_index
from pipeline.embeddings.profiles import ProfileAccumulator
from pipeline.io import DataError, atomic_dir, atomic_path, read_json, read_table, write_json, write_table

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

    @property
    def dim(self) -> int:
        return int(self.users.shape[1])

    @property
    def fingerprint(self) -> str:
        """Identifies the cache: same encoder weights, pooling and data give the same fingerprint."""
        keys = ("weights_fingerprint", "pooling", "max_length", "dim", "data_fingerprint", "profile")
        return "-".join(str(self.meta.get(k)) for k in keys)


def write_profiles(
    root: str | Path,
    users: np.ndarray,
    items: np.ndarray,
    user_counts: np.ndarray,
    item_counts: np.ndarray,
    meta: dict,
) -> None:
    root = Path(root)
    for kind, vectors, counts, name in (
        ("user", users, user_counts, USER_PROFILES_FILE),
        ("item", items, item_counts, ITEM_PROFILES_FILE),
    ):
        schema = profile_schema(kind, vectors.shape[1], meta)
        table = pa.Table.from_arrays(
            [
                pa.array(np.arange(len(vectors), dtype=np.int32)),
                vectors_to_arrow(vectors),
                pa.array(np.asarray(counts, dtype=np.int32)),
                pa.array(np.asarray(counts) > 0),
            ],
            schema=schema,
        )
        write_table(root / name, table)


def read_meta(root: str | Path) -> dict:
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


# ----------------------------------------------------------------------------------------------------------------
# streaming writer: shards -> reviews.parquet, profiles, index, meta.json
#
# Review vectors are encoded shard by shard; each shard is a small Parquet file in `<out>.partial/<key>/`, where the
# key fingerprints everything that changes the vectors, so a changed config never resumes from stale shards. A killed
# run re-encodes only the shards that are missing. Assembly streams the shards into one `reviews.parquet` (one row
# group per shard) while summing training vectors per user and item, then writes profiles, the index and meta.json
# into a temporary folder that is renamed into place last: a cache with meta.json is always complete.

SOURCE_COLUMNS = ["review_id", "user_idx", "item_idx", "split", "text"]
# meta fields that change the vectors; with the shard size they key the resumable work folder
VECTOR_KEYS = ("encoder", "weights_fingerprint", "pooling", "max_length", "dim", "data_fingerprint", "backend")


def library_versions() -> dict[str, str]:
    out = {}
    for name in ("torch", "transformers", "pyarrow", "numpy", "faiss-cpu"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def work_key(meta: dict, shard_size: int) -> str:
    payload = json.dumps({k: meta.get(k) for k in VECTOR_KEYS} | {"shard_size": shard_size}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def default_partial_dir(out: Path) -> Path:
    return out.with_name(f"{out.name}.partial")


def iter_source_shards(reviews_path: str | Path, shard_size: int):
    """Exactly `shard_size` reviews per shard (the last may be shorter), read by row group, never all at once."""
    reviews_path = Path(reviews_path)
    if not reviews_path.is_file():
        raise DataError(f"{reviews_path}: file not found (has `bertrs prepare` run?)")
    source = pq.ParquetFile(reviews_path)
    missing = [c for c in SOURCE_COLUMNS if c not in source.schema_arrow.names]
    if missing:
        raise DataError(f"{reviews_path}: missing column(s) {missing}")
    pending: list[pa.RecordBatch] = []
    n_pending = 0
    for batch in source.iter_batches(batch_size=shard_size, columns=SOURCE_COLUMNS):
        pending.append(batch)
        n_pending += batch.num_rows
        while n_pending >= shard_size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, shard_size)
            rest = table.slice(shard_size)
            pending, n_pending = rest.to_batches(), rest.num_rows
    if n_pending:
        yield pa.Table.from_batches(pending)


def _shard_is_valid(path: Path, source: pa.Table) -> bool:
    try:
        ids = pq.read_table(path, columns=["review_id"]).column("review_id")
    except Exception:  # unreadable (should not happen: shards are written atomically)
        return False
    return ids.equals(source.column("review_id"))


def write_embedding_cache(
    out: str | Path,
    reviews_path: str | Path,
    encode,
    *,
    meta: dict,
    n_users: int,
    n_items: int,
    shard_size: int = 2048,
    normalize_profiles: bool = False,
    index_metric: str = "cosine",
    index_choice: IndexChoice | None = None,
    work_dir: str | Path | None = None,
    on_shard=None,
    progress: bool = True,
) -> dict:
    """Encode every review of `reviews_path` with `encode(texts) -> (n, dim) float32` and write a complete cache.

    `meta` carries the provenance (META_FIELDS; versions are filled in when absent). `on_shard(k)` is
    called after shard k is safely on disk (tests use it to simulate a kill). Returns the final meta.
    """
    out = Path(out)
    dim = int(meta["dim"])
    meta = dict(meta)
    meta.setdefault("versions", library_versions())
    meta.update(profile=meta.get("profile", "mean"), normalize_profiles=normalize_profiles,
                index_metric=index_metric, n_users=n_users, n_items=n_items)
    missing = [k for k in META_FIELDS if k not in meta]
    if missing:
        raise ValueError(f"cache meta is missing provenance field(s) {missing}")

    partial = Path(work_dir) if work_dir is not None else default_partial_dir(out)
    run_dir = partial / work_key(meta, shard_size)
    if partial.is_dir():
        for stale in partial.iterdir():
            if stale != run_dir:
                shutil.rmtree(stale, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)

    total = pq.ParquetFile(Path(reviews_path)).metadata.num_rows
    shard_schema = reviews_schema(dim)
    shard_paths: list[Path] = []
    bar = tqdm(total=total, desc="embedding reviews", unit="review", disable=not progress)
    for k, source in enumerate(iter_source_shards(reviews_path, shard_size)):
        path = run_dir / f"shard-{k:05d}.parquet"
        shard_paths.append(path)
        if not (path.is_file() and _shard_is_valid(path, source)):
            vectors = np.asarray(encode(source.column("text").to_pylist()), dtype=np.float32)
            if vectors.shape != (source.num_rows, dim):
                raise ValueError(f"encoder returned shape {vectors.shape}, expected ({source.num_rows}, {dim})")
            table = pa.Table.from_arrays(
                [source.column(c) for c in ("review_id", "user_idx", "item_idx", "split")] + [vectors_to_arrow(vectors)],
                schema=shard_schema,
            )
            with atomic_path(path) as tmp:
                pq.write_table(table, tmp, compression="zstd")
            if on_shard is not None:
                on_shard(k)
        bar.update(source.num_rows)
    bar.close()

    meta["n_reviews"] = total
    profiles = ProfileAccumulator(n_users, n_items, dim)
    with atomic_dir(out) as tmp:
        with pq.ParquetWriter(tmp / REVIEWS_FILE, reviews_schema(dim, meta), compression="zstd") as writer:
            for path in tqdm(shard_paths, desc="assembling cache", unit="shard", disable=not progress):
                table = pq.read_table(path).cast(shard_schema)
                for name, size in (("user_idx", n_users), ("item_idx", n_items)):
                    column = table.column(name)
                    if len(column) and (pc.min(column).as_py() < 0 or pc.max(column).as_py() >= size):
                        raise DataError(f"{reviews_path}: {name} outside 0..{size - 1} (users/items maps)")
                writer.write_table(table.replace_schema_metadata(writer.schema.metadata), row_group_size=len(table) or 1)
                profiles.add(table.column("user_idx").to_numpy(), table.column("item_idx").to_numpy(),
                             np.asarray(table.column("split").to_pylist()), arrow_to_vectors(table.column("embedding"), dim))
        tables = profiles.finalize(normalize=normalize_profiles)
        write_profiles(tmp, tables.users, tables.items, tables.user_counts, tables.item_counts, meta)
        write_index(build_index(tables.items, index_metric, index_choice), tmp / INDEX_FILE)
        write_json(tmp / META_FILE, meta)
    shutil.rmtree(partial, ignore_errors=True)
    return meta


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
