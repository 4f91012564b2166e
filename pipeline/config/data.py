"""`prepare`: which review files are read, how their fields map, and how users, items and splits are filtered."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from pipeline.config.loading import check


@dataclass(frozen=True)
class ColumnMapping:
    """Field names for CSV, Parquet and generic JSON-lines inputs (Amazon JSON releases are recognised by their keys).

    Keys may contain any character, so BeerAdvocate's `beer/beerId` or Yelp's `business_id` map the same way.
    """

    user: str = "user_id"
    item: str = "item_id"
    rating: str = "rating"
    text: str = "text"  # may be several columns joined with ", ": "title, text"
    time: str = "timestamp"
    # s / ms: unix epoch numbers (an ISO-8601 string such as "2011-01-26" is still recognised); iso: ISO-8601 only;
    # format: parsed with `time_format`
    time_unit: Literal["s", "ms", "iso", "format"] = "s"
    time_format: Optional[str] = None  # strptime format for time_unit "format", e.g. "%a %b %d %H:%M:%S %z %Y"
    header: bool = True  # CSV: false when the first line is data; `names` then gives the columns in order
    names: list[str] = field(default_factory=list)  # CSV column names for a headerless file

    def __post_init__(self) -> None:
        check(self.header or len(self.names) >= 1, "prepare.columns.names",
              "a headerless CSV (columns.header: false) needs the column names in order")
        check(self.time_unit != "format" or bool(self.time_format), "prepare.columns.time_format",
              "time_unit 'format' needs a strptime format")


@dataclass(frozen=True)
class PrepareConfig:
    """`prepare`: the review files read, the users and items kept, and how held-out pairs are split off.

    Attributes
    ----------
    input : Review files or folders, plain or gzipped.
    format : The input's format; "auto" recognises it from the files.
    columns : Field names for CSV, Parquet and generic JSON-lines inputs.
    metadata : Item metadata files (Amazon `meta_*` JSON lines), read for display names only.
    text_fields : The review fields joined, in this order, into a review's text.
    min_text_chars : A review with fewer characters of text (after stripping) is dropped as empty.
    min_user_reviews, min_item_reviews : The fewest reviews a user / an item needs to be kept.
    k_core : Repeat the two filters until neither drops anything.
    max_users : Users sampled at random; None keeps all.
    protocol : "random" (shares of all positives held out at random) or "leave_one_out" (each user's latest
        interaction to test, the one before to validation).
    test_share : Random protocol: share of the positives held out for test, in (0, 1).
    valid_share : Random protocol: share of the remaining training positives held out for validation, in [0, 1).
    eval_negatives : Sampled negatives per held-out positive (the sampled protocol's candidates).
    seed : Seeds the user sample, the splits and the sampled negatives.
    strict : The first bad record raises instead of being counted and reported.
    """

    input: list[str] = field(default_factory=list)  # review files or folders, plain or gzipped
    # json: JSON lines (or Python-literal lines) with any field names, read through `columns`
    format: Literal["auto", "amazon2014", "amazon2018", "amazon2023", "python_literal", "json", "csv",
                    "parquet"] = "auto"
    columns: ColumnMapping = field(default_factory=ColumnMapping)
    # optional item metadata files (Amazon meta_* JSON lines: asin/parent_asin, title, category); display names only
    metadata: list[str] = field(default_factory=list)
    text_fields: list[str] = field(default_factory=lambda: ["summary", "reviewText"])  # joined in this order
    min_text_chars: int = 1  # a review with less text (after stripping) counts as empty and is dropped
    min_user_reviews: int = 20  # paper: 20
    min_item_reviews: int = 10  # paper: 10
    k_core: bool = False  # iterate the two filters to a fixed point
    max_users: Optional[int] = 10_000  # paper: 10,000 users sampled at random; null keeps all
    protocol: Literal["random", "leave_one_out"] = "random"
    test_share: float = 0.3  # random protocol: share of positives held out for test (paper: 30%)
    valid_share: float = 0.1  # random protocol: share of the remaining training positives used for validation
    eval_negatives: int = 99  # sampled negatives per held-out positive (NCF protocol)
    seed: int = 42
    strict: bool = False  # the first bad record is an error instead of a counted, reported skip

    def __post_init__(self) -> None:
        check(self.min_user_reviews >= 1, "prepare.min_user_reviews", "must be >= 1")
        check(self.min_item_reviews >= 1, "prepare.min_item_reviews", "must be >= 1")
        check(self.max_users is None or self.max_users >= 1, "prepare.max_users", "must be >= 1 or null")
        check(0.0 < self.test_share < 1.0, "prepare.test_share", "must lie in (0, 1)")
        check(0.0 <= self.valid_share < 1.0, "prepare.valid_share", "must lie in [0, 1)")
        check(self.eval_negatives >= 1, "prepare.eval_negatives", "must be >= 1")
        check(len(self.text_fields) >= 1, "prepare.text_fields", "needs at least one field")

