"""The `prepare` stage's library half: raw review files in, validated interaction tables out.

Two streaming passes keep memory bounded on full dumps: the first reads only ids, ratings, times and a text hash
(a few dozen bytes per record) to deduplicate, filter, sample and split; the second re-reads the files and streams
the text of the kept reviews straight into `reviews.parquet`, one row group at a time. Review text is therefore
never held in memory as a whole, whatever the size of the input.
"""

from __future__ import annotations

import hashlib
import logging
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from pipeline.config import PrepareConfig
from pipeline.data import filters, splits
from pipeline.data.formats import BadRecords, expand_inputs, read_item_metadata, read_reviews
from pipeline.data.prepared import (
    CANDIDATES_SCHEMA,
    FILES,
    INTERACTIONS_SCHEMA,
    ITEM_META_FILE,
    ITEM_META_SCHEMA,
    ITEMS_SCHEMA,
    REVIEWS_SCHEMA,
    STATS_FILE,
    USERS_SCHEMA,
)
from pipeline.io import DataError, atomic_dir, fingerprint_files, refuse_file_as_folder, write_json, write_table

log = logging.getLogger(__name__)
TEXT_BATCH = 8192  # reviews per row group of reviews.parquet


@dataclass
class Scan:
    """What the first pass keeps per valid record: compact columns, no text."""

    users: np.ndarray  # (n,) int64 code of the raw user id
    items: np.ndarray  # (n,) int64 code of the raw item id
    ratings: np.ndarray  # (n,) float32, NaN where missing
    times: np.ndarray  # (n,) int64 unix seconds
    text_hashes: np.ndarray  # (n,) int64, for exact-duplicate detection
    user_ids: list[str]  # code -> raw id
    item_ids: list[str]
    bad: BadRecords


def scan(files: list[Path], config: PrepareConfig) -> Scan:
    """First pass: ids, ratings, times and text hashes of every valid record."""
    user_codes: dict[str, int] = {}
    item_codes: dict[str, int] = {}
    users, items, times, hashes = array("q"), array("q"), array("q"), array("q")
    ratings = array("f")
    bad = BadRecords(strict=config.strict)
    records = read_reviews(files, config.format, config.text_fields, config.columns, bad)
    for review in tqdm(records, desc="prepare: scan", unit=" reviews", mininterval=1.0):
        if len(review.text.strip()) < config.min_text_chars:
            bad.report(files[review.source], review.line, "empty_text", "review text shorter than min_text_chars")
            continue
        users.append(user_codes.setdefault(review.user, len(user_codes)))
        items.append(item_codes.setdefault(review.item, len(item_codes)))
        ratings.append(np.nan if review.rating is None else review.rating)
        times.append(review.time)
        digest = hashlib.blake2b(review.text.encode(), digest_size=8).digest()
        hashes.append(int.from_bytes(digest, "little", signed=True))
    if not users:
        fix = bad.common_fix()
        hint = f"; every record failed the same way: change {fix}" if fix else ""
        first = f"; first: {bad.examples[0]}" if bad.examples else ""
        raise DataError(f"no valid review in {[str(f) for f in files]} (bad records: {dict(bad.counts)}){hint}{first}")
    return Scan(
        users=np.frombuffer(users, dtype=np.int64),
        items=np.frombuffer(items, dtype=np.int64),
        ratings=np.frombuffer(ratings, dtype=np.float32),
        times=np.frombuffer(times, dtype=np.int64),
        text_hashes=np.frombuffer(hashes, dtype=np.int64),
        user_ids=list(user_codes),
        item_ids=list(item_codes),
        bad=bad,
    )


def select(data: Scan, config: PrepareConfig) -> tuple[np.ndarray, dict]:
    """Deduplicate, filter and sample; returns the keep-mask and the records left after each step."""
    keep = np.ones(len(data.users), dtype=bool)
    steps = {"read": int(keep.sum())}
    keep = filters.exact_duplicates(data.users, data.items, data.text_hashes, keep)
    steps["after_exact_duplicates"] = int(keep.sum())
    keep = filters.first_per_pair(data.users, data.items, data.times, keep)
    steps["after_one_review_per_pair"] = int(keep.sum())
    keep = filters.min_count(data.users, keep, config.min_user_reviews)
    steps["after_min_user_reviews"] = int(keep.sum())
    keep = filters.sample_users(data.users, keep, config.max_users, config.seed)
    steps["after_max_users"] = int(keep.sum())
    keep = filters.count_filter(
        data.users, data.items, keep, config.min_user_reviews if config.k_core else 1, config.min_item_reviews,
        config.k_core,
    )
    steps["after_min_item_reviews" + ("_k_core" if config.k_core else "")] = int(keep.sum())
    if not keep.any():
        raise DataError(
            "no review is left after filtering: lower prepare.min_user_reviews / prepare.min_item_reviews "
            f"(records after each step: {steps})"
        )
    return keep, steps


def _index(codes: np.ndarray, raw_ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """Dense indices 0..n-1 ordered by raw id, so that the same data always gets the same indices."""
    present = np.unique(codes)
    names = [raw_ids[c] for c in present]
    order = np.argsort(np.asarray(names, dtype=object), kind="stable")
    lookup = np.full(len(raw_ids), -1, dtype=np.int64)
    lookup[present[order]] = np.arange(len(present))
    return lookup[codes], [names[i] for i in order]


def prepare_dataset(config: PrepareConfig, inputs: list[str | Path], out_dir: str | Path) -> dict:
    """Run the whole stage into `out_dir` (replaced atomically) and return the stats written to stats.json."""
    refuse_file_as_folder(out_dir, "--out")
    files = expand_inputs(inputs)
    out = Path(out_dir).resolve()
    inside = [f for f in files if Path(f).resolve() == out or out in Path(f).resolve().parents]
    if inside:  # replacing the output folder would delete the reviews it is made from
        raise DataError(f"--out {out_dir}: holds the input {inside[0]}; write the prepared data elsewhere")
    data = scan(files, config)
    keep, steps = select(data, config)
    rows = np.flatnonzero(keep)
    users, user_ids = _index(data.users[rows], data.user_ids)
    items, item_ids = _index(data.items[rows], data.item_ids)
    times, ratings = data.times[rows], data.ratings[rows]
    if config.protocol == "random":
        labels = splits.random_split(len(rows), config.test_share, config.valid_share, config.seed)
    else:
        labels = splits.leave_one_out_split(users, times, config.seed)
    candidates = splits.sample_candidates(users, items, labels, len(item_ids), config.eval_negatives, config.seed)

    with atomic_dir(out_dir) as tmp:
        _write_reviews(tmp / FILES["reviews"][0], files, config, rows, users, items, ratings, times, labels)
        for code, name in enumerate(splits.SPLIT_NAMES):
            part = labels == code
            table = pa.table(
                {"user_idx": users[part], "item_idx": items[part], "rating": ratings[part], "time": times[part]}
            )
            write_table(tmp / FILES[name][0], table, INTERACTIONS_SCHEMA)
        write_table(tmp / FILES["candidates"][0], _candidates_table(candidates), CANDIDATES_SCHEMA)
        write_table(tmp / FILES["users"][0], pa.table({"user_idx": np.arange(len(user_ids)), "user_id": user_ids}),
                    USERS_SCHEMA)
        write_table(tmp / FILES["items"][0], pa.table({"item_idx": np.arange(len(item_ids)), "item_id": item_ids}),
                    ITEMS_SCHEMA)
        stats = _stats(config, files, data, steps, users, items, labels, candidates, len(user_ids), len(item_ids))
        stats["fingerprint"] = fingerprint_files(sorted(tmp.glob("*.parquet")))
        if config.metadata:  # written after the fingerprint: names are for display and never change a model
            stats["item_metadata"] = _write_item_meta(tmp / ITEM_META_FILE, config.metadata, item_ids)
        write_json(tmp / STATS_FILE, stats)
    return stats


def _write_item_meta(path: Path, inputs: list[str], item_ids: list[str]) -> dict:
    files = expand_inputs(inputs)
    found = read_item_metadata(files, set(item_ids))
    titles = [found.get(i, (None, None))[0] for i in item_ids]
    categories = [found.get(i, (None, None))[1] for i in item_ids]
    table = pa.table({"item_idx": np.arange(len(item_ids), dtype=np.int32), "title": titles, "category": categories})
    write_table(path, table, ITEM_META_SCHEMA)
    return {"files": [str(f) for f in files], "items_with_title": sum(t is not None for t in titles),
            "items": len(item_ids)}


def _write_reviews(path, files, config, rows, users, items, ratings, times, labels) -> None:
    """Second pass: stream the kept reviews' text into Parquet row groups, in read order."""
    kept = np.zeros(rows[-1] + 1, dtype=np.int64) - 1
    kept[rows] = np.arange(len(rows))
    names = np.asarray(splits.SPLIT_NAMES)
    batch: list[tuple[int, str]] = []
    ordinal = -1
    with pq.ParquetWriter(path, REVIEWS_SCHEMA, compression="zstd") as writer:
        records = read_reviews(files, config.format, config.text_fields, config.columns, BadRecords())
        for review in tqdm(records, desc="prepare: write reviews", unit=" reviews", mininterval=1.0):
            if len(review.text.strip()) < config.min_text_chars:
                continue
            ordinal += 1
            if ordinal >= len(kept):
                break
            if kept[ordinal] >= 0:
                batch.append((int(kept[ordinal]), review.text))
                if len(batch) >= TEXT_BATCH:
                    writer.write_table(_review_batch(batch, users, items, ratings, times, labels, names))
                    batch = []
        if batch:
            writer.write_table(_review_batch(batch, users, items, ratings, times, labels, names))


def _review_batch(batch, users, items, ratings, times, labels, names) -> pa.Table:
    ids = np.fromiter((i for i, _ in batch), dtype=np.int64, count=len(batch))
    return pa.Table.from_arrays(
        [
            pa.array(ids),
            pa.array(users[ids].astype(np.int32)),
            pa.array(items[ids].astype(np.int32)),
            pa.array(ratings[ids], from_pandas=True),
            pa.array(times[ids]),
            pa.array([text for _, text in batch], pa.string()),
            pa.array(names[labels[ids]]),
        ],
        schema=REVIEWS_SCHEMA,
    )


def _candidates_table(candidates: splits.CandidateSet) -> pa.Table:
    return pa.table(
        {
            "split": np.asarray(splits.SPLIT_NAMES)[candidates.split],
            "user_idx": candidates.users.astype(np.int32),
            "item_idx": candidates.items.astype(np.int32),
            "negatives": pa.array([c.tolist() for c in candidates.negatives], pa.list_(pa.int32())),
        }
    )


def _stats(config, files, data, steps, users, items, labels, candidates, n_users, n_items) -> dict:
    n = len(users)
    split_counts = {name: int((labels == code).sum()) for code, name in enumerate(splits.SPLIT_NAMES)}
    return {
        "table1": {
            "users": n_users,
            "items": n_items,
            "reviews": n,
            "sparsity": 1.0 - n / (n_users * n_items),
        },
        "protocol": config.protocol,
        "inputs": [str(f) for f in files],
        "records_per_step": steps,
        "dropped": {
            "bad_records": dict(data.bad.counts),
            "exact_duplicates": steps["read"] - steps["after_exact_duplicates"],
            "repeated_pairs": steps["after_exact_duplicates"] - steps["after_one_review_per_pair"],
            "filters_and_sampling": steps["after_one_review_per_pair"] - n,
        },
        "bad_record_examples": data.bad.examples,
        "splits": split_counts,
        "users_without_test": int(n_users - len(np.unique(users[labels == splits.TEST]))),
        "candidates": {
            "negatives_per_positive": config.eval_negatives,
            "held_out_positives": int(len(candidates.users)),
            "truncated": candidates.truncated,
            "note": (
                f"{candidates.truncated} held-out positives have fewer than {config.eval_negatives} eligible "
                "negatives (small item set): all eligible items were used"
                if candidates.truncated
                else "every held-out positive has the full number of negatives"
            ),
        },
    }
