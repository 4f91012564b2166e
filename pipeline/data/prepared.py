"""The contract of the `prepare` stage's output folder: file names, Parquet schemas and a validated reader.

Every later stage reads prepared data only through `load_prepared`, so the layout lives in one place:

    reviews.parquet      one row per kept review: ids, rating, time, text and the split it belongs to
    train.parquet        training positives        (user_idx, item_idx, rating, time)
    valid.parquet        validation positives      (model selection and early stopping only)
    test.parquet         test positives            (reported metrics only)
    candidates.parquet   per held-out positive: the sampled negatives every model is ranked against
    users.parquet        user_idx -> raw user id
    items.parquet        item_idx -> raw item id
    item_meta.parquet    optional: item_idx -> title, category (from `prepare.metadata`); display only, so it is
                         left out of the data fingerprint and adding names never invalidates caches or models
    stats.json           Table 1 numbers, per-step drop counts, the data fingerprint
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.io import DataError, read_json, read_table

SPLITS = ("train", "valid", "test")

REVIEWS_SCHEMA = pa.schema(
    [
        pa.field("review_id", pa.int64(), nullable=False),
        pa.field("user_idx", pa.int32(), nullable=False),
        pa.field("item_idx", pa.int32(), nullable=False),
        pa.field("rating", pa.float32()),
        pa.field("time", pa.int64()),  # unix seconds
        pa.field("text", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # train | valid | test
    ]
)
INTERACTIONS_SCHEMA = pa.schema(
    [
        pa.field("user_idx", pa.int32(), nullable=False),
        pa.field("item_idx", pa.int32(), nullable=False),
        pa.field("rating", pa.float32()),
        pa.field("time", pa.int64()),
    ]
)
CANDIDATES_SCHEMA = pa.schema(
    [
        pa.field("split", pa.string(), nullable=False),  # valid | test
        pa.field("user_idx", pa.int32(), nullable=False),
        pa.field("item_idx", pa.int32(), nullable=False),  # the held-out positive
        pa.field("negatives", pa.list_(pa.int32()), nullable=False),  # never a positive of this user in any split
    ]
)
USERS_SCHEMA = pa.schema([pa.field("user_idx", pa.int32(), nullable=False), pa.field("user_id", pa.string())])
ITEMS_SCHEMA = pa.schema([pa.field("item_idx", pa.int32(), nullable=False), pa.field("item_id", pa.string())])

ITEM_META_SCHEMA = pa.schema(
    [pa.field("item_idx", pa.int32(), nullable=False), pa.field("title", pa.string()),
     pa.field("category", pa.string())]
)
ITEM_META_FILE = "item_meta.parquet"

FILES = {
    "reviews": ("reviews.parquet", REVIEWS_SCHEMA),
    "train": ("train.parquet", INTERACTIONS_SCHEMA),
    "valid": ("valid.parquet", INTERACTIONS_SCHEMA),
    "test": ("test.parquet", INTERACTIONS_SCHEMA),
    "candidates": ("candidates.parquet", CANDIDATES_SCHEMA),
    "users": ("users.parquet", USERS_SCHEMA),
    "items": ("items.parquet", ITEMS_SCHEMA),
}
STATS_FILE = "stats.json"


@dataclass(frozen=True)
class Interactions:
    """Positive (user, item) pairs of one split as index arrays."""

    users: np.ndarray  # (n,) int64
    items: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True)
class Candidates:
    """Held-out positives of one split with their stored negatives."""

    users: np.ndarray  # (n,) int64
    items: np.ndarray  # (n,) int64 positives
    negatives: np.ndarray  # (n, m) int64; rows shorter than m (tiny item sets) are padded with -1


@dataclass(frozen=True)
class PreparedData:
    """Everything the ranker needs from `prepare`, loaded and checked."""

    root: Path
    n_users: int
    n_items: int
    fingerprint: str  # content fingerprint of the prepared data; caches and checkpoints record it
    train: Interactions
    valid: Interactions
    test: Interactions
    candidates: dict[str, Candidates]  # "valid" and "test"
    user_ids: list[str]
    item_ids: list[str]
    stats: dict
    item_titles: list[str | None] | None = None  # from item_meta.parquet when prepare was given metadata
    item_categories: list[str | None] | None = None

    def item_label(self, item_idx: int) -> str:
        """The item's title where metadata gave one, else its raw id: what a person is shown."""
        title = self.item_titles[item_idx] if self.item_titles is not None else None
        return title or self.item_ids[item_idx]


def load_interactions(root: str | Path, split: str) -> Interactions:
    """The positive pairs of `split` ("train", "valid" or "test") in prepared folder `root`, as int64 index arrays."""
    name, schema = FILES[split]
    table = read_table(Path(root) / name, schema)
    return Interactions(
        users=table.column("user_idx").to_numpy().astype(np.int64),
        items=table.column("item_idx").to_numpy().astype(np.int64),
    )


def load_candidates(root: str | Path) -> dict[str, Candidates]:
    """The held-out positives of "valid" and "test" in `root` with their sampled negatives.

    Returns
    -------
    {"valid": Candidates, "test": Candidates}; each split's negatives are an (n, m) int64 array, m the longest list,
    shorter lists padded with -1.
    """
    name, schema = FILES["candidates"]
    table = read_table(Path(root) / name, schema)
    out = {}
    splits = np.asarray(table.column("split").to_pylist())
    for split in ("valid", "test"):
        rows = np.flatnonzero(splits == split)
        sub = table.take(pa.array(rows, pa.int64()))
        lists = sub.column("negatives").to_pylist()
        width = max((len(x) for x in lists), default=0)
        negatives = np.full((len(lists), width), -1, dtype=np.int64)
        for row, values in enumerate(lists):
            negatives[row, : len(values)] = values
        out[split] = Candidates(
            users=sub.column("user_idx").to_numpy().astype(np.int64),
            items=sub.column("item_idx").to_numpy().astype(np.int64),
            negatives=negatives,
        )
    return out


def load_prepared(root: str | Path) -> PreparedData:
    """Load a prepared-data folder; a missing file or column is a `DataError` naming it."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: prepared-data folder not found (run `bertrs prepare` first)")
    stats = read_json(root / STATS_FILE)
    users = read_table(root / FILES["users"][0], USERS_SCHEMA)
    items = read_table(root / FILES["items"][0], ITEMS_SCHEMA)
    data = PreparedData(
        root=root,
        n_users=users.num_rows,
        n_items=items.num_rows,
        fingerprint=stats["fingerprint"],
        train=load_interactions(root, "train"),
        valid=load_interactions(root, "valid"),
        test=load_interactions(root, "test"),
        candidates=load_candidates(root),
        user_ids=users.column("user_id").to_pylist(),
        item_ids=items.column("item_id").to_pylist(),
        stats=stats,
        **_item_meta(root, items.num_rows),
    )
    for split in SPLITS:
        part = getattr(data, split)
        if len(part) and (part.users.max() >= data.n_users or part.items.max() >= data.n_items):
            raise DataError(f"{root / FILES[split][0]}: user or item index outside users/items maps")
    return data


def _item_meta(root: Path, n_items: int) -> dict:
    path = root / ITEM_META_FILE
    if not path.is_file():
        return {}
    table = read_table(path, ITEM_META_SCHEMA)
    index = table.column("item_idx").to_numpy()
    if not np.array_equal(index, np.arange(n_items)):
        raise DataError(f"{path}: item_idx must be 0..{n_items - 1} in order, like items.parquet")
    return {"item_titles": table.column("title").to_pylist(), "item_categories": table.column("category").to_pylist()}


def load_reviews(root: str | Path, columns: list[str] | None = None) -> pa.Table:
    """The prepared folder's `reviews.parquet` (one row per kept review), checked against REVIEWS_SCHEMA; `columns`
    reads only those."""
    name, schema = FILES["reviews"]
    return read_table(Path(root) / name, schema, columns=columns)
