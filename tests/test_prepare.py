"""Specification of the `prepare` stage: formats, filters, split protocols, candidates, bad input, streaming."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import re
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pipeline.config import ColumnMapping, ConfigError
from pipeline.data import filters, splits
from pipeline.data.formats import BadRecords, detect_format, join_text, read_reviews
from pipeline.data.prepare import prepare_dataset
from pipeline.data.prepared import load_prepared, load_reviews
from pipeline.data.synthetic import SyntheticSpec, write_synthetic
from pipeline.io import DataError
from tests.data_fixtures import BUNDLED_SAMPLE, shared_file, small_prepare_config


def write_lines(path: Path, lines: list[str | bytes], gz: bool = False) -> Path:
    data = b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def amazon2018(user: str, item: str, text: str = "Great record. Loved it.", time: int = 1000, **extra) -> str:
    record = {"overall": 5.0, "verified": True, "reviewerID": user, "asin": item, "reviewText": text,
              "summary": "Nice", "unixReviewTime": time, **extra}
    return json.dumps(record)


# ---------------------------------------------------------------------------------------------------- formats


def test_each_json_release_is_detected_and_normalised(tmp_path):
    r2014 = write_lines(tmp_path / "a.json", [json.dumps({"reviewerID": "u", "asin": "i", "overall": 4.0,
                                                          "reviewText": "t", "summary": "s", "unixReviewTime": 5,
                                                          "helpful": [0, 0]})])
    r2018 = write_lines(tmp_path / "b.json.gz", [amazon2018("u", "i", vote="3")], gz=True)
    r2023 = write_lines(tmp_path / "c.jsonl", [json.dumps({"user_id": "u", "parent_asin": "p", "asin": "a",
                                                           "rating": 3, "title": "T", "text": "body",
                                                           "timestamp": 1_600_000_000_123})])
    literal = write_lines(tmp_path / "d.txt", ["{'reviewerID': 'u', 'asin': 'i', 'overall': 2.0, "
                                               "'reviewText': 'py', 'summary': 'lit', 'unixReviewTime': 9}"])
    assert [detect_format(p) for p in (r2014, r2018, r2023, literal)] == [
        "amazon2014", "amazon2018", "amazon2023", "python_literal"]
    reviews = list(read_reviews([r2014, r2018, r2023, literal], "auto", ["summary", "reviewText"],
                                ColumnMapping(), BadRecords()))
    assert [(r.user, r.item, r.rating, r.time, r.text) for r in reviews] == [
        ("u", "i", 4.0, 5, "s. t"),
        ("u", "i", 5.0, 1000, "Nice. Great record. Loved it."),
        ("u", "p", 3.0, 1_600_000_000, "T. body"),  # 2023: parent_asin is the item, ms -> s, title + text
        ("u", "i", 2.0, 9, "lit. py"),
    ]


def test_csv_and_parquet_use_the_column_mapping(tmp_path):
    columns = ColumnMapping(user="who", item="what", rating="stars", text="headline, body", time="when")
    with open(tmp_path / "r.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["who", "what", "stars", "headline", "body", "when"])
        writer.writerow(["u1", "i1", "5", "Good", "multi\nline body", "10"])
        writer.writerow(["u2", "i2", "1", "Bad", "", "11"])
    pq.write_table(pa.table({"who": ["u3"], "what": ["i3"], "stars": [2.0], "headline": ["H"], "body": ["B"],
                             "when": [12]}), tmp_path / "r.parquet")
    reviews = list(read_reviews([tmp_path / "r.csv", tmp_path / "r.parquet"], "auto", [], columns, BadRecords()))
    assert [(r.user, r.text, r.time, r.line) for r in reviews] == [
        ("u1", "Good. multi\nline body", 10, 3), ("u2", "Bad", 11, 4), ("u3", "H. B", 12, 1)]


def test_csv_without_a_mapped_column_names_it(tmp_path):
    (tmp_path / "r.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"r\.csv: CSV has no column\(s\) \['user_id'"):
        list(read_reviews([tmp_path / "r.csv"], "auto", [], ColumnMapping(), BadRecords()))


def test_summary_and_text_join_into_sentences():
    assert join_text(["Five stars", "It works."]) == "Five stars. It works."
    assert join_text(["Wow!", "Loud"]) == "Wow! Loud"
    assert join_text([None, "  ", "only"]) == "only"


# ------------------------------------------------------------------------------------------------- bad input


def bad_input_file(tmp_path: Path) -> Path:
    return write_lines(tmp_path / "bad.json", [
        amazon2018("u1", "i1"),
        "{not json",
        json.dumps({"reviewerID": "u2", "overall": 3.0, "reviewText": "x", "unixReviewTime": 1}),  # no asin
        amazon2018("u3", "i3", text="", summary=""),
        b'{"reviewerID": "u4", "asin": "i4", "reviewText": "caf\xe9", "unixReviewTime": 1}',
        amazon2018("u5", "i5"),
    ])


def test_bad_records_are_counted_with_file_and_line(tmp_path):
    path = bad_input_file(tmp_path)
    bad = BadRecords()
    kept = list(read_reviews([path], "amazon2018", ["summary", "reviewText"], ColumnMapping(), bad))
    assert [r.user for r in kept] == ["u1", "u5"]
    assert bad.counts == Counter(malformed=1, missing_field=1, empty_text=1, non_utf8=1)
    assert bad.examples[0] == f"{path}:2: malformed line (not a JSON object)"
    assert f"{path}:3: missing required field(s) ['asin']" in bad.examples
    assert any(e.startswith(f"{path}:5: byte") for e in bad.examples)


def test_strict_mode_stops_at_the_first_bad_record(tmp_path):
    path = bad_input_file(tmp_path)
    with pytest.raises(DataError, match=rf"{path}:2: malformed line.*strict"):
        list(read_reviews([path], "amazon2018", ["reviewText"], ColumnMapping(), BadRecords(strict=True)))


def test_prepare_reports_bad_records_in_stats(tmp_path):
    stats = prepare_dataset(small_prepare_config(min_user_reviews=1, min_item_reviews=1),
                            [bad_input_file(tmp_path)], tmp_path / "out")
    assert stats["dropped"]["bad_records"] == {"malformed": 1, "missing_field": 1, "empty_text": 1, "non_utf8": 1}
    assert len(stats["bad_record_examples"]) == 4


def test_missing_file_and_unknown_format_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="nope.json: input file not found"):
        prepare_dataset(small_prepare_config(), [tmp_path / "nope.json"], tmp_path / "out")
    write_lines(tmp_path / "other.json", [json.dumps({"foo": 1})])
    with pytest.raises(DataError, match="other.json: unknown review format"):
        prepare_dataset(small_prepare_config(), [tmp_path / "other.json"], tmp_path / "out")


def test_a_failed_run_leaves_the_previous_output_untouched(tmp_path, synthetic_dump):
    out = tmp_path / "out"
    prepare_dataset(small_prepare_config(), [synthetic_dump], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(DataError, match="no review is left"):
        prepare_dataset(small_prepare_config(min_user_reviews=10_000), [synthetic_dump], out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind


# --------------------------------------------------------------------------------------------------- filters


def test_exact_duplicates_and_repeated_pairs_are_dropped(tmp_path):
    path = write_lines(tmp_path / "dup.json", [
        amazon2018("u1", "i1", time=5), amazon2018("u1", "i1", time=5),  # exact duplicate
        amazon2018("u1", "i1", text="Changed my mind.", time=9),  # same pair, later review
        amazon2018("u1", "i2"), amazon2018("u2", "i1"),
    ])
    stats = prepare_dataset(small_prepare_config(min_user_reviews=1, min_item_reviews=1), [path], tmp_path / "o")
    assert stats["dropped"]["exact_duplicates"] == 1
    assert stats["dropped"]["repeated_pairs"] == 1
    reviews = load_reviews(tmp_path / "o").to_pylist()
    assert len(reviews) == 3
    assert "Changed my mind." not in [r["text"] for r in reviews]  # the earliest review of the pair is kept


def test_min_counts_without_and_with_k_core():
    users = np.array([0, 0, 0, 1, 1, 2])
    items = np.array([0, 1, 2, 0, 1, 0])
    keep = np.ones(6, dtype=bool)
    once = filters.count_filter(users, items, keep, min_user=2, min_item=2, k_core=False)
    assert once.tolist() == [True, True, False, True, True, False]  # user 2 out, then item 2 out
    # one pass leaves user 0 with 2 reviews; with min_user=3 k-core keeps removing until nothing violates
    core = filters.count_filter(users, items, keep, min_user=3, min_item=1, k_core=True)
    assert core.tolist() == [True, True, True, False, False, False]
    chain = filters.count_filter(users, items, keep, min_user=3, min_item=2, k_core=True)
    assert not chain.any()  # removing item 2 drops user 0 below 3, which drops items 0 and 1 below 2


def test_user_sampling_is_seeded_and_keeps_whole_users():
    users = np.repeat(np.arange(50), 3)
    keep = np.ones(len(users), dtype=bool)
    a = filters.sample_users(users, keep, 10, seed=1)
    assert np.array_equal(a, filters.sample_users(users, keep, 10, seed=1))
    assert len(np.unique(users[a])) == 10 and a.sum() == 30


# ---------------------------------------------------------------------------------------------------- splits


def _pairs(data, split):
    part = getattr(data, split)
    return set(zip(part.users.tolist(), part.items.tolist()))


@pytest.mark.parametrize("protocol", ["leave_one_out", "random"])
def test_splits_are_disjoint_and_candidates_are_true_negatives(tmp_path, synthetic_dump, protocol):
    prepare_dataset(small_prepare_config(protocol=protocol), [synthetic_dump], tmp_path / "p")
    data = load_prepared(tmp_path / "p")
    train, valid, test = (_pairs(data, s) for s in ("train", "valid", "test"))
    assert not (train & valid) and not (train & test) and not (valid & test)
    positives: dict[int, set[int]] = {}
    for user, item in train | valid | test:
        positives.setdefault(user, set()).add(item)
    for split in ("valid", "test"):
        cands = data.candidates[split]
        assert set(zip(cands.users.tolist(), cands.items.tolist())) == _pairs(data, split)
        for user, row in zip(cands.users, cands.negatives):
            row = row[row >= 0]
            assert len(set(row.tolist())) == len(row) == 20  # no duplicates, full count
            assert not set(row.tolist()) & positives[int(user)]  # never a positive of that user, in any split


def test_leave_one_out_holds_out_each_users_latest_interactions():
    users = np.array([0, 0, 0, 0, 1, 1, 2])
    times = np.array([4, 1, 3, 2, 7, 8, 1])
    labels = splits.leave_one_out_split(users, times, seed=0)
    assert labels.tolist() == [splits.TEST, 0, splits.VALID, 0, 0, splits.TEST, 0]


def test_random_split_matches_the_requested_shares():
    labels = splits.random_split(1000, test_share=0.3, valid_share=0.1, seed=0)
    assert (labels == splits.TEST).sum() == 300 and (labels == splits.VALID).sum() == 70


def test_same_seed_same_output(tmp_path, synthetic_dump):
    a = prepare_dataset(small_prepare_config(protocol="random"), [synthetic_dump], tmp_path / "a")
    b = prepare_dataset(small_prepare_config(protocol="random"), [synthetic_dump], tmp_path / "b")
    c = prepare_dataset(small_prepare_config(protocol="random", seed=8), [synthetic_dump], tmp_path / "c")
    assert a["fingerprint"] == b["fingerprint"] != c["fingerprint"]


def test_tiny_item_sets_use_all_eligible_items_and_say_so():
    users = np.array([0, 0, 0, 1, 1])
    items = np.array([0, 1, 2, 0, 3])
    labels = np.array([0, 0, 2, 0, 2], dtype=np.int8)
    cands = splits.sample_candidates(users, items, labels, n_items=5, n_negatives=3, seed=0)
    assert [sorted(c.tolist()) for c in cands.negatives] == [[3, 4], [1, 2, 4]]
    assert cands.truncated == 1


def test_reviews_table_labels_every_review_with_its_split(prepared_dir):
    data = load_prepared(prepared_dir)
    reviews = load_reviews(prepared_dir).to_pylist()
    by_split = Counter(r["split"] for r in reviews)
    assert by_split == {s: len(getattr(data, s)) for s in ("train", "valid", "test")}
    test_pairs = _pairs(data, "test")
    assert all(((r["user_idx"], r["item_idx"]) in test_pairs) == (r["split"] == "test") for r in reviews)


# ------------------------------------------------------------------------------------------------- streaming


def _peak_bytes(path: Path, out: Path) -> int:
    tracemalloc.start()
    prepare_dataset(small_prepare_config(min_user_reviews=1, min_item_reviews=1, k_core=False), [path], out)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_review_text_is_streamed_not_held_in_memory(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.data.prepare.TEXT_BATCH", 128)  # many row groups even on a small file
    spec = SyntheticSpec(n_users=300, n_items=100, reviews_per_user=8, seed=1)
    short = write_synthetic(tmp_path / "short.json.gz", spec)
    padding = " and the sound was fine" * 100  # about 2.3 kB more text per review
    records = [json.loads(line) for line in gzip.open(short, "rt")]
    long = write_lines(tmp_path / "long.json.gz", [json.dumps({**r, "reviewText": r["reviewText"] + padding})
                                                   for r in records], gz=True)
    added_text = len(records) * len(padding)
    _peak_bytes(short, tmp_path / "warm_up")  # lazy imports inside libraries must not count
    growth = _peak_bytes(long, tmp_path / "o_long") - _peak_bytes(short, tmp_path / "o_short")
    # every review is kept; were the text held, peak memory would grow by at least the text added
    assert growth < 0.1 * added_text


# ----------------------------------------------------------------------------------------------- real data


def test_bundled_sample_prepares_with_default_params_into_the_3_core_the_readme_describes(tmp_path):
    from pipeline.config import load_params
    from pipeline.data.prepared import load_reviews

    config = load_params(Path(__file__).resolve().parents[1] / "params.yaml").prepare
    stats = prepare_dataset(config, [BUNDLED_SAMPLE], tmp_path / "p")
    table1 = stats["table1"]
    assert (table1["reviews"], table1["users"], table1["items"]) == (4566, 756, 361)  # docs/data.md: The bundled sample
    assert stats["candidates"]["truncated"] == 0
    reviews = load_reviews(tmp_path / "p", ["user_idx", "item_idx"])
    for column, least in (("user_idx", config.min_user_reviews), ("item_idx", config.min_item_reviews)):
        assert np.bincount(reviews.column(column).to_numpy()).min() >= least  # k-core: every one of them


@pytest.mark.shared
@pytest.mark.parametrize("relative, pairs, users, items", [
    ("amazon2018/All_Beauty_5.json.gz", 4092, 991, 85),
    ("amazon2018/AMAZON_FASHION_5.json.gz", 3042, 406, 31),
    ("amazon2018/Gift_Cards_5.json.gz", 2965, 458, 148),
    ("amazon2014/reviews_Digital_Music_5.first6907.json.gz", 6907, 2490, 382),
])
def test_shared_files_match_an_independent_count(tmp_path, relative, pairs, users, items):
    path = shared_file(relative)
    # independent count with the standard library: distinct (reviewer, product) pairs
    records = [json.loads(line) for line in gzip.open(path, "rt")]
    independent = {(r["reviewerID"], r["asin"]) for r in records}
    assert len(independent) == pairs  # the shared README's published numbers
    stats = prepare_dataset(small_prepare_config(min_user_reviews=1, min_item_reviews=1, k_core=False),
                            [path], tmp_path / "p")
    assert stats["records_per_step"]["read"] == len(records)
    assert stats["table1"]["reviews"] == pairs
    assert (stats["table1"]["users"], stats["table1"]["items"]) == (users, items)


# ------------------------------------------------------------------------------------------ inputs as they come


def test_a_truncated_gzip_names_the_file_and_the_records_read_and_writes_nothing(tmp_path):
    from stages.cli import app

    lines = [amazon2018(f"u{n % 7}", f"i{n % 5}", text=f"review number {n} " * 20) for n in range(400)]
    whole = gzip.compress(b"".join(line.encode() + b"\n" for line in lines))
    path = tmp_path / "cut.json.gz"
    path.write_bytes(whole[: len(whole) // 2])
    params = tmp_path / "params.yaml"
    params.write_text("prepare:\n  min_user_reviews: 1\n  min_item_reviews: 1\n")
    res = CliRunner().invoke(app, ["prepare", "--input", str(path), "--out", str(tmp_path / "out"),
                                   "--params", str(params)])
    assert res.exit_code == 2, res.output
    assert "Aborted" not in res.output and f"{path}: truncated or corrupt gzip file" in res.output
    read = int(re.search(r"after (\d+) complete records", res.output).group(1))
    assert 0 < read < 400
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.json.gz", "params.yaml"]  # no output, no temp folder


def test_iso_dates_are_read_in_csv_and_parquet_time_columns(tmp_path):
    columns = ColumnMapping(user="user_id", item="business_id", rating="stars", text="text", time="date")
    (tmp_path / "yelp.csv").write_text("user_id,business_id,stars,text,date\n"
                                       "u1,b1,4,Tasty,2011-01-26\nu2,b2,5,Nice,2016-03-09 10:00:00\n")
    pq.write_table(pa.table({"user_id": ["u3", "u4"], "business_id": ["b3", "b4"], "stars": [3.0, 2.0],
                             "text": ["Ok", "Meh"],
                             "date": pa.array([1_296_000_000_000_000, 0], pa.timestamp("us"))}), tmp_path / "y.parquet")
    reviews = list(read_reviews([tmp_path / "yelp.csv", tmp_path / "y.parquet"], "auto", [], columns, BadRecords()))
    assert [r.time for r in reviews] == [1_296_000_000, 1_457_517_600, 1_296_000_000, 0]
    iso_only = dataclasses.replace(columns, time_unit="iso")
    assert [r.time for r in read_reviews([tmp_path / "yelp.csv"], "csv", [], iso_only, BadRecords())] == [
        1_296_000_000, 1_457_517_600]


def test_when_every_row_fails_on_the_time_field_the_error_names_the_setting(tmp_path):
    (tmp_path / "r.csv").write_text("user_id,item_id,rating,text,timestamp\nu1,i1,4,Fine,26/01/2011\n"
                                    "u2,i2,5,Good,27/01/2011\n")
    with pytest.raises(DataError) as error:
        prepare_dataset(small_prepare_config(), [tmp_path / "r.csv"], tmp_path / "out")
    message = str(error.value)
    assert "every record failed the same way: change prepare.columns.time_unit" in message
    assert f"{tmp_path / 'r.csv'}:2: timestamp '26/01/2011' is not a time" in message
    assert not (tmp_path / "out").exists()


def test_when_every_json_line_lacks_the_item_field_the_error_names_the_setting(tmp_path):
    path = write_lines(tmp_path / "yelp.json", [json.dumps({"user_id": "u", "item_id": "b1", "stars": 4,
                                                            "text": "x", "date": "2011-01-26"})])
    columns = ColumnMapping(item="item_id", rating="stars", time="date")
    (tmp_path / "y2.json").write_text(json.dumps({"user_id": "u", "business_id": "b", "stars": 4, "text": "x",
                                                  "date": "2011-01-26"}) + "\n")
    assert len(list(read_reviews([path], "auto", [], columns, BadRecords()))) == 1
    with pytest.raises(DataError, match="change prepare.columns.item .*now 'item_id'"):
        prepare_dataset(small_prepare_config(columns=columns, format="json"), [tmp_path / "y2.json"], tmp_path / "o")


def test_headerless_csv_takes_its_column_names_from_params(tmp_path):
    (tmp_path / "r.csv").write_text("u1,i1,5,Great,10\nu2,i2,3,Fine,11\n")
    columns = ColumnMapping(header=False, names=["user_id", "item_id", "rating", "text", "timestamp"])
    reviews = list(read_reviews([tmp_path / "r.csv"], "auto", [], columns, BadRecords()))
    assert [(r.user, r.item, r.rating, r.text, r.time, r.line) for r in reviews] == [
        ("u1", "i1", 5.0, "Great", 10, 1), ("u2", "i2", 3.0, "Fine", 11, 2)]
    with pytest.raises(ConfigError, match="prepare.columns.names"):
        ColumnMapping(header=False)
    with pytest.raises(DataError, match=r"no column\(s\) \['item_id'\].*set prepare.columns.names"):
        list(read_reviews([tmp_path / "r.csv"], "auto", [], ColumnMapping(header=False, names=["user_id", "x",
                                                                                              "rating", "text",
                                                                                              "timestamp"]),
                          BadRecords()))


def test_json_dumps_with_other_field_names_read_through_the_column_mapping(tmp_path):
    beer = write_lines(tmp_path / "beeradvocate.txt.gz", [
        "{'beer/name': 'Sausa Weizen', 'beer/beerId': '47986', 'review/overall': '1.5', "
        "'review/time': '1234817823', 'review/profileName': 'stcules', 'review/text': 'A lot of foam.'}"], gz=True)
    yelp = write_lines(tmp_path / "yelp_review.json", [json.dumps({
        "review_id": "r", "user_id": "yu", "business_id": "yb", "stars": 4.0, "text": "Great tacos.",
        "date": "2016-03-09 00:00:00"})])
    goodreads = write_lines(tmp_path / "goodreads.json", [json.dumps({
        "user_id": "gu", "book_id": "24375664", "rating": 5, "review_text": "Loved it.",
        "date_added": "Fri Sep 08 10:44:24 -0700 2017"})])
    cases = [
        (beer, ColumnMapping(user="review/profileName", item="beer/beerId", rating="review/overall",
                             text="review/text", time="review/time"), ("stcules", "47986", 1.5, 1234817823)),
        (yelp, ColumnMapping(user="user_id", item="business_id", rating="stars", text="text", time="date"),
         ("yu", "yb", 4.0, 1457481600)),
        (goodreads, ColumnMapping(user="user_id", item="book_id", rating="rating", text="review_text",
                                  time="date_added", time_unit="format", time_format="%a %b %d %H:%M:%S %z %Y"),
         ("gu", "24375664", 5.0, 1504892664)),
    ]
    for path, columns, expected in cases:
        assert detect_format(path, columns) == "json"
        (review,) = read_reviews([path], "auto", [], columns, BadRecords())
        assert (review.user, review.item, review.rating, review.time) == expected


def test_item_metadata_gives_names_without_changing_the_data_fingerprint(tmp_path, synthetic_dump):
    plain = prepare_dataset(small_prepare_config(), [synthetic_dump], tmp_path / "plain")
    items = load_prepared(tmp_path / "plain").item_ids
    meta = write_lines(tmp_path / "meta_Digital_Music.json.gz", [
        "{'asin': '%s', 'title': 'First Album', 'categories': [['CDs & Vinyl', 'Jazz']]}" % items[0],
        json.dumps({"parent_asin": items[1], "title": "Second", "main_category": "Digital Music"}),
        json.dumps({"asin": "not-in-the-data", "title": "Ignored"}),
    ], gz=True)
    named = prepare_dataset(small_prepare_config(metadata=[str(meta)]), [synthetic_dump], tmp_path / "named")
    assert named["fingerprint"] == plain["fingerprint"]
    assert named["item_metadata"]["items_with_title"] == 2
    data = load_prepared(tmp_path / "named")
    assert data.item_titles[:2] == ["First Album", "Second"] and data.item_categories[:2] == ["CDs & Vinyl",
                                                                                               "Digital Music"]
    assert data.item_label(0) == "First Album" and data.item_label(2) == items[2]
    assert load_prepared(tmp_path / "plain").item_titles is None
    bad = write_lines(tmp_path / "meta_bad.json", ['{"title": "no id"}'])
    with pytest.raises(DataError, match=r"meta_bad.json:1: item metadata has no asin"):
        prepare_dataset(small_prepare_config(metadata=[str(bad)]), [synthetic_dump], tmp_path / "named")


def test_a_csv_with_a_byte_order_mark_and_semicolons_is_read_and_its_separator_named(tmp_path, caplog):
    (tmp_path / "r.csv").write_text("\ufeffuser_id;item_id;rating;text;timestamp\nu1;i1;4;Fine, really;10\n"
                                    "u2;i2;5;Great;11\n", encoding="utf-8")
    with caplog.at_level("INFO", logger="pipeline.data.formats"):
        reviews = list(read_reviews([tmp_path / "r.csv"], "auto", [], ColumnMapping(), BadRecords()))
    assert [(r.user, r.item, r.rating, r.text, r.time) for r in reviews] == [
        ("u1", "i1", 4.0, "Fine, really", 10), ("u2", "i2", 5.0, "Great", 11)]
    assert f"{tmp_path / 'r.csv'}: CSV separated by ';'" in caplog.text


def test_tab_separated_and_headerless_csv_files_are_sniffed_too(tmp_path):
    (tmp_path / "t.csv").write_text("user_id\titem_id\trating\ttext\ttimestamp\nu1\ti1\t4\tFine; fine, yes\t10\n")
    (tmp_path / "h.csv").write_text("u1;i1;5;Great, yes;10\nu2;i2;3;Fine;11\n")
    tabbed = list(read_reviews([tmp_path / "t.csv"], "auto", [], ColumnMapping(), BadRecords()))
    assert [r.text for r in tabbed] == ["Fine; fine, yes"]
    headerless = ColumnMapping(header=False, names=["user_id", "item_id", "rating", "text", "timestamp"])
    assert [r.text for r in read_reviews([tmp_path / "h.csv"], "auto", [], headerless, BadRecords())] == [
        "Great, yes", "Fine"]
