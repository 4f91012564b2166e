"""The resumable cache writer: review shards -> reviews.parquet, profiles, FAISS index, meta.json.

Review vectors are encoded shard by shard (by an engine: `engines/local.py` in this process, `engines/ray.py` on a
Ray actor pool); shard k holds source rows [k * shard_size, (k + 1) * shard_size) as a small Parquet file in
`<out>.partial/<key>/`, where the key fingerprints everything that changes the vectors, so a changed config never
resumes from stale shards. A killed run re-encodes only the shards that are missing. One forward pass may pool
several ways (encoders that share weights and differ only in pooling): a shard then holds one vector column per
pooling and each cache is assembled from its own column. Assembly streams the shards into one `reviews.parquet`
(one row group per shard) while summing training vectors per user and item, then writes profiles, the index and
meta.json into a temporary folder that is renamed into place last: a cache with meta.json is always complete.

The layout of the finished folder is `pipeline.embeddings.cache`'s; readers import that module, not this one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pipeline.embeddings.cache import (
    INDEX_FILE,
    META_FIELDS,
    META_FILE,
    REVIEWS_FILE,
    reviews_schema,
    vectors_to_arrow,
    ITEM_PROFILES_FILE,
    USER_PROFILES_FILE,
    arrow_to_vectors,
    profile_schema,
)
from pipeline.embeddings.index import IndexChoice, build_index, write_index
from pipeline.embeddings.profiles import ProfileAccumulator
from pipeline.io import DataError, atomic_dir, atomic_path, write_json, write_table

SOURCE_COLUMNS = ["review_id", "user_idx", "item_idx", "split", "text"]
ID_COLUMNS = ["review_id", "user_idx", "item_idx", "split"]
# meta fields that change the vectors; with the shard size they key the resumable work folder
VECTOR_KEYS = ("encoder", "weights_fingerprint", "pooling", "max_length", "dim", "data_fingerprint", "backend",
               "int8_model")

# texts -> (n, dim) float32 for one pooling, or {pooling: (n, dim)} for several from one forward pass
EncodeFn = Callable[[Sequence[str]], "np.ndarray | Mapping[str, np.ndarray]"]


def library_versions() -> dict[str, str]:
    """{package: version} of torch, transformers, pyarrow, numpy and faiss-cpu, for those installed: the
    versions a cache's meta records."""
    out = {}
    for name in ("torch", "transformers", "pyarrow", "numpy", "faiss-cpu"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def work_key(metas: Sequence[dict], shard_size: int) -> str:
    """A 16-hex-digit key of the VECTOR_KEYS of `metas` and `shard_size`: the resumable work folder's name."""
    payload = json.dumps([{k: m.get(k) for k in VECTOR_KEYS} for m in metas] + [{"shard_size": shard_size}],
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def default_partial_dir(out: Path) -> Path:
    """The work folder beside cache `out`: `<out>.partial`."""
    return Path(out).with_name(f"{Path(out).name}.partial")


def vector_column(pooling: str) -> str:
    """A shard's vector column for `pooling`: `embedding_<pooling>`."""
    return f"embedding_{pooling}"


@dataclass(frozen=True)
class ShardPlan:
    """Which source rows each shard holds: fixed boundaries, so any engine and any resumed run agree."""

    reviews_path: Path
    shard_size: int
    total: int

    @classmethod
    def for_source(cls, reviews_path: str | Path, shard_size: int) -> "ShardPlan":
        """The plan over `reviews_path` in shards of `shard_size` rows; a missing file or source column raises
        `DataError`."""
        reviews_path = Path(reviews_path)
        if not reviews_path.is_file():
            raise DataError(f"{reviews_path}: file not found (has `bertrs prepare` run?)")
        schema = pq.read_schema(reviews_path)
        missing = [c for c in SOURCE_COLUMNS if c not in schema.names]
        if missing:
            raise DataError(f"{reviews_path}: missing column(s) {missing}")
        return cls(reviews_path, shard_size, pq.ParquetFile(reviews_path).metadata.num_rows)

    @property
    def n_shards(self) -> int:
        """Shards in the plan: `total / shard_size`, rounded up."""
        return -(-self.total // self.shard_size)

    def bounds(self, k: int) -> tuple[int, int]:
        """The source rows [start, stop) of shard `k`."""
        return k * self.shard_size, min((k + 1) * self.shard_size, self.total)


def read_source_rows(reviews_path: str | Path, start: int, stop: int) -> pa.Table:
    """Rows [start, stop) of the prepared reviews, reading only the row groups that hold them."""
    source = pq.ParquetFile(reviews_path)
    groups, offset, first = [], 0, None
    for g in range(source.metadata.num_row_groups):
        n = source.metadata.row_group(g).num_rows
        if offset + n > start and offset < stop:
            groups.append(g)
            first = offset if first is None else first
        offset += n
    if not groups:
        return source.schema_arrow.empty_table().select(SOURCE_COLUMNS)
    table = source.read_row_groups(groups, columns=SOURCE_COLUMNS)
    return table.slice(start - first, stop - start)


def shard_path(run_dir: Path, k: int) -> Path:
    """Shard `k`'s file in the work folder `run_dir`."""
    return run_dir / f"shard-{k:05d}.parquet"


def shard_is_done(path: Path, plan: ShardPlan, k: int) -> bool:
    """A shard counts as done when it exists and holds exactly the review ids of its source rows."""
    if not path.is_file():
        return False
    try:
        ids = pq.read_table(path, columns=["review_id"]).column("review_id")
    except Exception:  # unreadable (should not happen: shards are written atomically)
        return False
    start, stop = plan.bounds(k)
    return ids.equals(read_source_rows(plan.reviews_path, start, stop).column("review_id"))


def encode_shard(source: pa.Table, encode: EncodeFn, poolings: Sequence[str], dim: int) -> pa.Table:
    """One shard: the source's id columns plus one (n, dim) float32 vector column per pooling."""
    vectors = encode(source.column("text").to_pylist())
    if not isinstance(vectors, Mapping):
        vectors = {poolings[0]: vectors}
    columns = [source.column(c) for c in ID_COLUMNS]
    names = list(ID_COLUMNS)
    for pooling in poolings:
        array = np.asarray(vectors[pooling], dtype=np.float32)
        if array.shape != (source.num_rows, dim):
            raise ValueError(f"encoder returned shape {array.shape}, expected ({source.num_rows}, {dim})")
        columns.append(vectors_to_arrow(array))
        names.append(vector_column(pooling))
    return pa.Table.from_arrays(columns, names=names)


def write_shard(path: Path, table: pa.Table) -> None:
    """Write a shard table to `path` as zstd Parquet, atomically."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def encode_and_write_shard(plan: ShardPlan, run_dir: Path, k: int, encode: EncodeFn, poolings: Sequence[str],
                           dim: int) -> int:
    """Read shard k's source rows, encode them and write the shard atomically; returns its row count."""
    start, stop = plan.bounds(k)
    write_shard(shard_path(run_dir, k), encode_shard(read_source_rows(plan.reviews_path, start, stop), encode,
                                                     poolings, dim))
    return stop - start


def full_meta(meta: dict, *, n_users: int, n_items: int, normalize_profiles: bool, index_metric: str) -> dict:
    """A cache's meta.json content: `meta` with the profile and index settings and the catalogue's size added, and the
    library versions where `meta` has none; a missing provenance field (META_FIELDS) raises `ValueError`."""
    meta = dict(meta)
    meta.setdefault("versions", library_versions())
    meta.update(profile=meta.get("profile", "mean"), normalize_profiles=normalize_profiles,
                index_metric=index_metric, n_users=n_users, n_items=n_items)
    missing = [k for k in META_FIELDS if k not in meta]
    if missing:
        raise ValueError(f"cache meta is missing provenance field(s) {missing}")
    return meta


def assemble_cache(out: Path, plan: ShardPlan, run_dir: Path, pooling: str, meta: dict, *, n_users: int,
                   n_items: int, index_choice: IndexChoice | None = None, progress: bool) -> dict:
    """Stream the finished shards' `pooling` column into the cache folder `out` (atomically); returns its meta."""
    dim = int(meta["dim"])
    meta = dict(meta, n_reviews=plan.total)
    schema = reviews_schema(dim, meta)
    profiles = ProfileAccumulator(n_users, n_items, dim)
    with atomic_dir(out) as tmp:
        with pq.ParquetWriter(tmp / REVIEWS_FILE, schema, compression="zstd") as writer:
            for k in tqdm(range(plan.n_shards), desc=f"assembling {out.name}", unit="shard", disable=not progress):
                shard = pq.read_table(shard_path(run_dir, k), columns=ID_COLUMNS + [vector_column(pooling)])
                table = pa.Table.from_arrays(shard.columns, schema=schema)
                for name, size in (("user_idx", n_users), ("item_idx", n_items)):
                    column = table.column(name)
                    if len(column) and (pc.min(column).as_py() < 0 or pc.max(column).as_py() >= size):
                        raise DataError(f"{plan.reviews_path}: {name} outside 0..{size - 1} (users/items maps)")
                writer.write_table(table, row_group_size=len(table) or 1)
                profiles.add(table.column("user_idx").to_numpy(), table.column("item_idx").to_numpy(),
                             np.asarray(table.column("split").to_pylist()),
                             arrow_to_vectors(table.column("embedding"), dim))
        tables = profiles.finalize(normalize=meta["normalize_profiles"])
        write_profiles(tmp, tables.users, tables.items, tables.user_counts, tables.item_counts, meta)
        write_index(build_index(tables.items, meta["index_metric"], index_choice), tmp / INDEX_FILE)
        write_json(tmp / META_FILE, meta)
    return meta


def write_embedding_caches(
    outs: Mapping[str, str | Path],
    reviews_path: str | Path,
    engine,
    *,
    metas: Mapping[str, dict],
    n_users: int,
    n_items: int,
    shard_size: int = 2048,
    normalize_profiles: bool = False,
    index_metric: str = "cosine",
    index_choice: IndexChoice | None = None,
    work_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, dict]:
    """Encode every review once and write one complete cache per pooling in `outs` ({pooling: folder}).

    `metas[pooling]` carries each cache's provenance (META_FIELDS; versions are filled in when absent); `engine`
    has `run(plan, run_dir, todo, poolings, dim, bar)` and writes the shards listed in `todo`. Returns the metas.
    """
    poolings = list(outs)
    metas = {p: full_meta(metas[p], n_users=n_users, n_items=n_items, normalize_profiles=normalize_profiles,
                          index_metric=index_metric) for p in poolings}
    dims = {int(m["dim"]) for m in metas.values()}
    if len(dims) != 1:
        raise ValueError(f"caches written from one pass must share one dimension, got {sorted(dims)}")
    dim = dims.pop()
    plan = ShardPlan.for_source(reviews_path, shard_size)
    first = Path(outs[poolings[0]])
    partial = Path(work_dir) if work_dir is not None else default_partial_dir(first)
    run_dir = partial / work_key([metas[p] for p in poolings], shard_size)
    if partial.is_dir():
        for stale in partial.iterdir():
            if stale != run_dir:
                shutil.rmtree(stale, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)

    done = [k for k in range(plan.n_shards) if shard_is_done(shard_path(run_dir, k), plan, k)]
    todo = sorted(set(range(plan.n_shards)) - set(done))
    with tqdm(total=plan.total, desc="embedding reviews", unit="review", disable=not progress) as bar:
        bar.update(sum(plan.bounds(k)[1] - plan.bounds(k)[0] for k in done))
        if todo:
            engine.run(plan, run_dir, todo, poolings, dim, bar)
    missing = [k for k in range(plan.n_shards) if not shard_path(run_dir, k).is_file()]
    if missing:
        raise RuntimeError(f"the encoding engine left shard(s) {missing[:5]} unwritten in {run_dir}")
    final = {p: assemble_cache(Path(outs[p]), plan, run_dir, p, metas[p], n_users=n_users, n_items=n_items,
                               index_choice=index_choice, progress=progress) for p in poolings}
    shutil.rmtree(partial, ignore_errors=True)
    return final


def write_profiles(
    root: str | Path,
    users: np.ndarray,
    items: np.ndarray,
    user_counts: np.ndarray,
    item_counts: np.ndarray,
    meta: dict,
) -> None:
    """Write a cache's user and item profile tables (the contract's `profile_schema`, rows in index order).

    Parameters
    ----------
    root : The cache folder being written.
    users, items : (n_users, dim) and (n_items, dim) float32 profiles.
    user_counts, item_counts : Training reviews behind each profile (0: the fallback vector).
    meta : The cache's provenance, stored in each file's schema metadata.
    """
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
