"""Streaming readers for review dumps: Amazon 2014 / 2018 / 2023 JSON lines, Python-literal lines, JSON lines with
any field names (Yelp, Goodreads, BeerAdvocate, through `prepare.columns`), CSV (with or without a header), Parquet.

Full Amazon dumps hold tens of millions of lines, so every reader is a generator that yields one normalised
`RawReview` at a time and never holds the file in memory. Bad records are not silently skipped: each one is
reported to a `BadRecords` tally with its file and line number (or raised at once in strict mode).
"""

from __future__ import annotations

import ast
import csv
import datetime as dt
import gzip
import itertools
import json
import logging
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import ColumnMapping
from pipeline.io import DataError

log = logging.getLogger(__name__)

FORMATS = ("amazon2014", "amazon2018", "amazon2023", "python_literal", "json", "csv", "parquet")

# Canonical text-field names (the 2014/2018 keys) and what the 2023 release calls them, so that one
# `text_fields` setting works for every JSON release.
AMAZON2023_FIELDS = {"summary": "title", "reviewText": "text"}
AMAZON_KEYS = {"user": "reviewerID", "item": "asin", "rating": "overall", "time": "unixReviewTime"}
AMAZON2023_KEYS = {"user": "user_id", "item": "parent_asin", "rating": "rating", "time": "timestamp"}


@dataclass(frozen=True)
class RawReview:
    """One review as read, before any filtering; `line` is 1-based (data rows for CSV/Parquet)."""

    user: str
    item: str
    rating: float | None
    time: int  # unix seconds
    text: str
    source: int  # index of the input file
    line: int


@dataclass
class BadRecords:
    """Counts of skipped records by reason, with the first few locations for the report."""

    strict: bool = False
    max_examples: int = 20
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    settings: Counter = field(default_factory=Counter)  # the params setting that would fix a record, when one would

    def report(self, path: Path, line: int, reason: str, detail: str, setting: str | None = None) -> None:
        """Count a skipped record under `reason` and keep its location among the first `max_examples`; with
        `strict`, raise `DataError` with the message instead.

        Parameters
        ----------
        path, line : Where the record is (`line` is 1-based).
        reason : The count it goes under ("missing_field", "bad_value", "empty_text", "non_utf8", "malformed").
        detail : What is wrong with it, for the message.
        setting : The params setting that would fix it, where one would (see `common_fix`).
        """
        message = f"{path}:{line}: {detail}"
        if self.strict:
            raise DataError(f"{message} (strict mode: the first bad record stops the run)")
        self.counts[reason] += 1
        if setting is not None:
            self.settings[setting] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(message)

    def common_fix(self) -> str | None:
        """The one setting every bad record points at (e.g. a time column in another format), if there is one."""
        total = sum(self.counts.values())
        if not total or not self.settings:
            return None
        setting, count = self.settings.most_common(1)[0]
        return setting if count == total else None


def open_text_lines(path: Path) -> Iterator[bytes]:
    """Yield raw lines, gunzipping when the file starts with the gzip magic bytes (whatever its name).

    A truncated or corrupt gzip file is a `DataError` naming the file and how far reading got (gzip raises
    EOFError, which the command-line layer would otherwise turn into a bare "Aborted.").
    """
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    lines = 0
    try:
        with opener(path, "rb") as handle:
            for line in handle:
                yield line
                lines += 1
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise DataError(
            f"{path}: truncated or corrupt gzip file: reading stopped after {lines} complete records (lines) "
            f"({error}); re-download or re-compress it. Nothing was written."
        ) from None


def detect_format(path: Path, columns: ColumnMapping | None = None) -> str:
    """Guess the format from the name (CSV, Parquet) or the first non-empty line (JSON or Python literal); JSON
    with other field names is "json" when `columns` names its user and item fields."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".csv"):
        return "csv"
    for number, raw in enumerate(open_text_lines(path), start=1):
        line = raw.decode("utf-8", errors="replace").strip()
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            try:
                record = ast.literal_eval(line)
            except (ValueError, SyntaxError):
                raise DataError(f"{path}:{number}: cannot detect the format (neither JSON nor a Python dict "
                                "literal)") from None
            if isinstance(record, dict) and "reviewerID" in record:
                return "python_literal"
            if isinstance(record, dict) and columns is not None and columns.user in record and columns.item in record:
                return "json"
            return _unknown(path)
        if not isinstance(record, dict):
            return _unknown(path)
        if "parent_asin" in record or ("user_id" in record and "asin" in record):
            return "amazon2023"
        if "reviewerID" in record:
            return "amazon2018" if {"verified", "vote", "style", "image"} & set(record) else "amazon2014"
        if columns is not None and columns.user in record and columns.item in record:
            return "json"
        return _unknown(path)
    raise DataError(f"{path}: file is empty")


def _unknown(path: Path) -> str:
    raise DataError(
        f"{path}: unknown review format: expected Amazon 2014/2018 keys (reviewerID, asin, ...) or 2023 keys "
        "(user_id, parent_asin, ...); for other JSON lines set prepare.columns (user, item, rating, text, time) to its "
        "field names; for CSV/Parquet give the file a .csv/.parquet name and set prepare.columns"
    )


def join_text(parts: list[object]) -> str:
    """Join text fields (summary first) into one review text, adding a full stop so sentence splitting works."""
    pieces = [str(p).strip() for p in parts if p is not None and str(p).strip()]
    out = ""
    for piece in pieces:
        if out:
            out += " " if out[-1] in ".!?" else ". "
        out += piece
    return out


def to_seconds(value: object, unit: str, time_format: str | None = None) -> int:
    """Unix seconds from an epoch number (s or ms), an ISO-8601 string or date, or a string in `time_format`.

    Epoch units still accept ISO-8601 strings ("2011-01-26", "2016-03-09 00:00:00"), so Yelp-style dates work
    without a setting; a naive date-time is read as UTC.
    """
    if isinstance(value, dt.datetime):
        return _epoch(value)
    if isinstance(value, dt.date):
        return _epoch(dt.datetime(value.year, value.month, value.day))
    if unit == "format":
        return _epoch(dt.datetime.strptime(str(value).strip(), time_format or ""))
    if unit != "iso":
        try:
            seconds = float(value)  # type: ignore[arg-type]
            return int(seconds / 1000) if unit == "ms" else int(seconds)
        except (TypeError, ValueError):
            if not isinstance(value, str):
                raise
    return _epoch(dt.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00")))


def _epoch(moment: dt.datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return int(moment.timestamp())


TIME_FIX = "prepare.columns.time_unit (s, ms, iso, or format with prepare.columns.time_format)"


def _from_mapping(
    record: dict, keys: dict[str, str], text_keys: list[str], time_unit: str, path: Path, line: int, bad: BadRecords,
    time_format: str | None = None,
) -> tuple[str, str, float | None, int, str] | None:
    missing = [k for k in ("user", "item", "time") if record.get(keys[k]) in (None, "")]
    if missing:
        names = [keys[k] for k in missing]
        setting = f"prepare.columns.{missing[0]} (the field holding the {missing[0]}; now {keys[missing[0]]!r})"
        bad.report(path, line, "missing_field", f"missing required field(s) {names}", setting)
        return None
    try:
        rating = None if record.get(keys["rating"]) in (None, "") else float(record[keys["rating"]])
    except (TypeError, ValueError):
        bad.report(path, line, "bad_value", f"non-numeric {keys['rating']} {record[keys['rating']]!r}",
                   f"prepare.columns.rating (now {keys['rating']!r})")
        return None
    try:
        time = to_seconds(record[keys["time"]], time_unit, time_format)
    except (TypeError, ValueError):
        bad.report(path, line, "bad_value",
                   f"{keys['time']} {record[keys['time']]!r} is not a time in unit {time_unit!r}", TIME_FIX)
        return None
    text = join_text([record.get(k) for k in text_keys])
    if not text:
        bad.report(path, line, "empty_text", f"empty review text (fields {text_keys})",
                   f"prepare.text_fields / prepare.columns.text (now {text_keys})")
        return None
    return str(record[keys["user"]]), str(record[keys["item"]]), rating, time, text


def read_json_lines(
    path: Path, fmt: str, text_fields: list[str], source: int, bad: BadRecords, columns: ColumnMapping | None = None
) -> Iterator[RawReview]:
    """Amazon JSON lines (2014, 2018, 2023), one-Python-dict-per-line dumps, and JSON lines with other field names
    ("json": read through `columns`, like CSV; Python-literal lines are accepted too)."""
    time_format = None
    if fmt == "amazon2023":
        keys, text_keys, unit = AMAZON2023_KEYS, [AMAZON2023_FIELDS.get(f, f) for f in text_fields], "ms"
    elif fmt == "json":
        columns = columns or ColumnMapping()
        (keys, text_keys), unit, time_format = _column_keys(columns), columns.time_unit, columns.time_format
    else:
        keys, text_keys, unit = AMAZON_KEYS, text_fields, "s"
    for number, raw in enumerate(open_text_lines(path), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            bad.report(path, number, "non_utf8", f"byte {error.start} is not UTF-8")
            continue
        line = line.strip()
        if not line:
            continue
        try:
            record = _parse_line(line, fmt)
        except (ValueError, SyntaxError):
            bad.report(path, number, "malformed", "malformed line (not a JSON object)")
            continue
        if not isinstance(record, dict):
            bad.report(path, number, "malformed", "line is not an object")
            continue
        values = _from_mapping(record, keys, text_keys, unit, path, number, bad, time_format)
        if values is not None:
            yield RawReview(*values, source=source, line=number)


def _parse_line(line: str, fmt: str) -> object:
    if fmt == "python_literal":
        return ast.literal_eval(line)
    if fmt == "json":
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            return ast.literal_eval(line)  # McAuley's beer and Goodreads-era dumps are Python dict literals
    return json.loads(line)


def _column_keys(columns: ColumnMapping) -> tuple[dict[str, str], list[str]]:
    keys = {"user": columns.user, "item": columns.item, "rating": columns.rating, "time": columns.time}
    return keys, [c.strip() for c in columns.text.split(",")]


# separators a CSV export uses (spreadsheets in locales with a decimal comma write ';'); sniffed per file
CSV_DELIMITERS = ",;\t|"
BYTE_ORDER_MARK = "\ufeff"


def sniff_delimiter(first_line: str, n_fields: int | None = None) -> str:
    """The separator of a CSV file, judged from its first line (the header, or the first record).

    Parameters
    ----------
    first_line
        The file's first line, decoded, without a byte-order mark.
    n_fields
        For a file without a header line, how many columns `prepare.columns.names` gives it.

    Returns
    -------
    str
        Of `CSV_DELIMITERS` (first wins a tie, so ',' when nothing tells them apart): the one that splits the line
        into `n_fields` fields when that is given and one does, else the one that splits it into the most fields.
        Quoted fields count as one, as the reader will read them.
    """
    fields = {d: len(next(csv.reader([first_line], delimiter=d), [])) for d in CSV_DELIMITERS}
    exact = [d for d in CSV_DELIMITERS if n_fields is not None and fields[d] == n_fields]
    return exact[0] if exact else max(CSV_DELIMITERS, key=fields.__getitem__)


def read_csv(path: Path, columns: ColumnMapping, source: int, bad: BadRecords) -> Iterator[RawReview]:
    """Stream the reviews of a CSV file (plain or gzipped), its delimiter sniffed from the first line.

    Parameters
    ----------
    path : The file.
    columns : The field names to read (`prepare.columns`); `header: false` reads `columns.names` as the columns.
    source : The file's index among the inputs, recorded on each review.
    bad : Where non-UTF-8 lines and records with a missing, non-numeric or unparseable field, or empty text, are
        reported.

    Yields
    ------
    The reviews in file order, `line` the physical line a record starts on. A missing header or a column the mapping
    names but the file lacks (the rating column excepted) raises `DataError`.
    """
    keys, text_keys = _column_keys(columns)
    lines = _decode_or_report(path, bad)
    first = next(lines, "").removeprefix(BYTE_ORDER_MARK)  # Excel's "CSV UTF-8" starts with one
    delimiter = sniff_delimiter(first, None if columns.header else len(columns.names))
    if first:
        log.info("%s: CSV separated by %r", path, delimiter)
    try:
        reader = csv.DictReader(itertools.chain([first] if first else [], lines), delimiter=delimiter,
                                fieldnames=None if columns.header else columns.names)
        header = reader.fieldnames or []
    except csv.Error as error:
        raise DataError(f"{path}:1: unreadable CSV header ({error})") from None
    if not header:
        raise DataError(f"{path}: empty file (no header line, no records)")
    missing = [c for c in [*keys.values(), *text_keys] if c not in header and c != keys["rating"]]
    if missing:
        where = "prepare.columns.names" if not columns.header else "prepare.columns (or columns.header: false " \
                "and columns.names for a file without a header line)"
        raise DataError(f"{path}: CSV has no column(s) {missing} (columns: {header}); set {where}")
    for record in reader:
        number = reader.line_num  # physical line, correct across quoted multi-line fields
        values = _from_mapping(record, keys, text_keys, columns.time_unit, path, number, bad, columns.time_format)
        if values is not None:
            yield RawReview(*values, source=source, line=number)


def _decode_or_report(path: Path, bad: BadRecords) -> Iterator[str]:
    for number, raw in enumerate(open_text_lines(path), start=1):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as error:
            bad.report(path, number, "non_utf8", f"byte {error.start} is not UTF-8")


def read_parquet(path: Path, columns: ColumnMapping, source: int, bad: BadRecords) -> Iterator[RawReview]:
    """Stream the reviews of a Parquet file, in batches of rows.

    Parameters
    ----------
    path : The file.
    columns : The field names to read (`prepare.columns`).
    source : The file's index among the inputs, recorded on each review.
    bad : Where records with a missing, non-numeric or unparseable field, or empty text, are reported.

    Yields
    ------
    The reviews in row order, `line` the 1-based row number. An unreadable file, or one without the user, item, time
    or text columns, raises `DataError`.
    """
    keys, text_keys = _column_keys(columns)
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet file ({error})") from None
    names = parquet.schema_arrow.names
    missing = [c for c in [keys["user"], keys["item"], keys["time"], *text_keys] if c not in names]
    if missing:
        raise DataError(f"{path}: Parquet file has no column(s) {missing} (columns: {names}); set prepare.columns")
    wanted = [c for c in dict.fromkeys([*keys.values(), *text_keys]) if c in names]
    number = 0
    for batch in parquet.iter_batches(columns=wanted, batch_size=65536):
        for record in batch.to_pylist():
            number += 1
            values = _from_mapping(record, keys, text_keys, columns.time_unit, path, number, bad, columns.time_format)
            if values is not None:
                yield RawReview(*values, source=source, line=number)


def expand_inputs(inputs: list[str | Path]) -> list[Path]:
    """Files as given, folders expanded to their files (sorted); a missing path is an error naming it."""
    files: list[Path] = []
    for entry in inputs:
        path = Path(entry)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")))
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path}: input file not found")
    if not files:
        raise DataError(f"no input files in {list(map(str, inputs))}")
    return files


def read_reviews(
    files: list[Path], fmt: str, text_fields: list[str], columns: ColumnMapping, bad: BadRecords
) -> Iterator[RawReview]:
    """Stream every review of every file, detecting each file's format unless `fmt` names one."""
    for source, path in enumerate(files):
        file_format = detect_format(path, columns) if fmt == "auto" else fmt
        if file_format == "csv":
            yield from read_csv(path, columns, source, bad)
        elif file_format == "parquet":
            yield from read_parquet(path, columns, source, bad)
        elif file_format in FORMATS:
            yield from read_json_lines(path, file_format, text_fields, source, bad, columns)
        else:
            raise DataError(f"{path}: unknown format {file_format!r} (one of {FORMATS})")


def _category(record: dict) -> str | None:
    """Amazon 2023 `main_category`, or the most specific entry of 2014/2018 `categories` / `category` lists."""
    if record.get("main_category"):
        return str(record["main_category"])
    for key in ("categories", "category"):
        value = record.get(key)
        while isinstance(value, list) and value:
            value = value[-1] if key == "category" else value[0]
        if isinstance(value, str) and value:
            return value
    return None


def read_item_metadata(files: list[Path], wanted: set[str]) -> dict[str, tuple[str | None, str | None]]:
    """Item id -> (title, category) from Amazon meta_* files (JSON or Python-literal lines, plain or gzipped).

    Only items in `wanted` are kept, so a full metadata dump costs memory for the kept catalogue only. A line that
    does not parse is an error naming it: metadata is optional, but a broken metadata file is a wrong input.
    """
    found: dict[str, tuple[str | None, str | None]] = {}
    for path in files:
        for number, raw in enumerate(open_text_lines(path), start=1):
            line = raw.decode("utf-8", errors="replace").strip()
            if not line:
                continue
            try:
                record = _parse_line(line, "json")
            except (ValueError, SyntaxError):
                raise DataError(f"{path}:{number}: item metadata line is neither JSON nor a Python dict") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{number}: item metadata line is not an object")
            item = record.get("parent_asin") or record.get("asin")
            if item is None:
                raise DataError(f"{path}:{number}: item metadata has no asin / parent_asin field")
            if str(item) in wanted:
                title = record.get("title")
                found[str(item)] = (str(title).strip() if title else None, _category(record))
    return found
