"""`bertrs generate --like`: a synthetic set shaped like a real prepared one, its reviews the real set's own texts
(or planted words), its planted signals fitted to the real set's next-review predictability, with both sets'
measures beside it."""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.config import load_params
from pipeline.data.likeness import (NEIGHBOURHOOD, NOT_FITTED, NOT_FITTED_BY_TEXT, SIGNAL_GRIDS, LikeSpec,
                                    RealSet, _text_neighbourhoods, fit_signals, generated_signals, generated_topics,
                                    gini, like_records, real_set, write_like)
from pipeline.data.prepare import prepare_dataset
from pipeline.io import DataError
from stages.cli import app
from tests.data_fixtures import BUNDLED_SAMPLE

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sample_prepared(tmp_path_factory) -> Path:
    """The bundled Digital Music sample, prepared with the default params (756 users, 361 items, 4,566 reviews)."""
    out = tmp_path_factory.mktemp("like") / "prepared"
    prepare_dataset(load_params(REPO / "params.yaml").prepare, [BUNDLED_SAMPLE], out)
    return out


@pytest.fixture(scope="module")
def small_prepared(tmp_path_factory) -> Path:
    """The bundled sample's first 2,500 records with reviews cut to 30 words, prepared with the default params: a
    real set small enough to fit and generate from in seconds."""
    folder = tmp_path_factory.mktemp("small_like")
    with gzip.open(next(BUNDLED_SAMPLE.glob("*.json.gz")), "rt", encoding="utf-8") as handle:
        records = [json.loads(line) for _, line in zip(range(2500), handle)]
    with gzip.open(folder / "small.json.gz", "wt", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps({**record, "reviewText": " ".join(record.get("reviewText", "").split()[:30])})
                         + "\n")
    prepare_dataset(load_params(REPO / "params.yaml").prepare, [folder / "small.json.gz"], folder / "prepared")
    return folder / "prepared"


def test_a_set_generated_like_the_sample_has_its_size_activity_popularity_and_review_lengths(sample_prepared,
                                                                                             tmp_path):
    figures = write_like(sample_prepared, tmp_path / "like.json.gz", LikeSpec(seed=3), grid=None)
    real, generated = figures["real"], figures["generated"]
    assert (real["users"], real["items"], real["reviews"]) == (756, 361, 4566)
    assert generated["users"] == real["users"] and abs(generated["items"] - real["items"]) <= real["items"] * 0.02
    assert abs(generated["reviews"] - real["reviews"]) <= real["reviews"] * 0.1
    for measure in ("user_activity", "review_words"):
        for point in ("p25", "median", "p75"):
            assert abs(generated[measure][point] - real[measure][point]) <= max(1.0, 0.15 * real[measure][point]), \
                (measure, point)
    assert abs(generated["item_popularity_gini"] - real["item_popularity_gini"]) <= 0.1
    assert figures["fit"] is None and figures["settings"]["text"] == "real"
    assert figures["not_fitted"] == (list(NOT_FITTED) + list(NOT_FITTED_BY_TEXT["real"])
                                     + [f"{knob} (given)" for knob in SIGNAL_GRIDS["real"]])
    assert json.loads((tmp_path / "like.json.gz.like.json").read_text()) == figures


def test_the_generated_dump_prepares_like_any_review_dump_and_doubles_with_scale(small_prepared, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["generate", str(tmp_path / "like.json.gz"), "--like", str(small_prepared),
                                 "--scale", "2", "--seed", "1", "--no-fit"])
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "like.json.gz.like.json").read_text())
    assert figures["generated"]["users"] == 2 * figures["real"]["users"]
    stats = prepare_dataset(load_params(REPO / "params.yaml").prepare, [tmp_path / "like.json.gz"], tmp_path / "p")
    assert stats["table1"]["reviews"] > 0.8 * figures["generated"]["reviews"]  # the 3-core keeps nearly all of it
    refused = runner.invoke(app, ["generate", str(tmp_path / "x.json.gz"), "--like", str(small_prepared),
                                  "--users", "10"])
    assert refused.exit_code != 0 and "use --scale" in refused.output
    missing = runner.invoke(app, ["generate", str(tmp_path / "y.json.gz"), "--like", str(tmp_path / "nowhere")])
    assert missing.exit_code != 0 and "nowhere/reviews.parquet: file not found" in missing.output


def test_gini_is_zero_for_equal_counts_and_grows_with_concentration():
    assert gini([5, 5, 5, 5]) == pytest.approx(0.0)
    assert gini([1, 1, 1, 97]) > gini([10, 20, 30, 40]) > 0.0


@pytest.fixture(scope="module")
def sample_real(sample_prepared):
    """The sample's activity, popularity, review lengths and texts, at a third of its users and items and reviews of
    at most 60 words (the measures below take a second each at that size)."""
    real = real_set(sample_prepared)
    real.words = np.minimum(real.words, 60)
    real.texts = [" ".join(text.split()[:60]) for text in real.texts]
    real.measures = {**real.measures, "users": 250, "items": 120}
    return real


def test_each_planted_signal_moves_the_measure_it_names(sample_real):
    no_text = generated_signals(sample_real, LikeSpec(text="planted", topic_words=0))
    topical_text = generated_signals(sample_real, LikeSpec(text="planted", topics=32, topic_words=16))
    assert no_text["held_out_users"] == sample_real.measures["users"]  # every sample user has 3 or more reviews
    assert no_text["text_neighbour_lift"] < 1.1 < 1.3 < topical_text["text_neighbour_lift"]
    assert no_text["text_hit_lift"] < 1.5 < 3.0 < topical_text["text_hit_lift"]  # 1: text no better than shuffled
    tasteless = generated_signals(sample_real, LikeSpec(text="planted", topic_affinity=0.0))
    neighbourly = generated_signals(sample_real, LikeSpec(text="planted", topic_affinity=0.0, cooccurrence=0.7))
    assert neighbourly["cooccurrence_hit_rate"] > 2 * tasteless["cooccurrence_hit_rate"]
    named = generated_signals(sample_real, LikeSpec(text="planted", topic_affinity=0.0, cooccurrence=0.7,
                                                    topic_words=0, name_words=8))
    assert named["text_hit_lift"] > 3 * neighbourly["text_hit_lift"]  # the name in the review finds the neighbours


def tiny_real_set() -> RealSet:
    """Sixteen real items of two reviews each: items 0 and 1 are reviewed in the same words, as are 2 and 3; each of
    the other twelve has a word of its own, shared with no other item."""
    words = ["alpha beta", "alpha beta", "gamma delta", "gamma delta"] + [f"solo{chr(97 + k)}" for k in range(12)]
    texts = [words[item] for item in range(16) for _ in range(2)]
    text_items = np.repeat(np.arange(16), 2)
    return RealSet(np.array([2] * 16), np.array([2] * 16), np.array([2] * 32), {"users": 16, "items": 16}, texts,
                   text_items)


def test_a_real_items_text_neighbours_are_itself_then_the_items_reviewed_in_its_words_and_wordless_items_no_hub():
    nearest = tiny_real_set().nearest_items()
    assert nearest[:4, :2].tolist() == [[0, 1], [1, 0], [2, 3], [3, 2]]
    assert nearest[4:, 0].tolist() == list(range(4, 16))
    assert len(set(nearest[4:, 1].tolist())) >= 6  # equal (zero) cosines are not all broken towards the same items


def test_a_text_neighbourhood_holds_its_donors_items_then_the_nearest_donors_until_it_is_full():
    donor = np.repeat(np.arange(16), 2)  # generated items 2k and 2k + 1 take real item k's reviews
    neighbourhood, neighbours = _text_neighbourhoods(tiny_real_set(), donor, np.ones(32))
    assert neighbourhood.tolist() == donor.tolist()
    pool, cumulative = neighbours[int(neighbourhood[0])]
    assert pool[:4].tolist() == [0, 1, 2, 3] and len(pool) >= NEIGHBOURHOOD and len(set(pool.tolist())) == len(pool)
    assert cumulative.tolist() == list(range(1, len(pool) + 1))


def test_a_donor_giving_to_many_items_has_them_cut_into_neighbourhoods_of_the_usual_size():
    donor = np.r_[np.zeros(25, dtype=np.int64), np.arange(1, 16)]  # real item 0 gives its reviews to 25 items
    neighbourhood, neighbours = _text_neighbourhoods(tiny_real_set(), donor, np.ones(40))
    parts = sorted({int(n) for n in neighbourhood[:25]})
    assert len(parts) == 2 and sorted(len(neighbours[n][0]) for n in parts) == [12, 13]
    assert sorted(np.concatenate([neighbours[n][0] for n in parts]).tolist()) == list(range(25))
    assert all(n >= 16 for n in parts)  # numbered apart from the small donors' neighbourhoods


def test_with_real_text_a_cooccurrence_neighbourhood_is_the_items_whose_donors_reviews_read_alike(sample_real):
    tasteless = generated_signals(sample_real, LikeSpec(topics=16, topic_affinity=0.0, text_fidelity=1.0, seed=0))
    neighbourly = generated_signals(sample_real, LikeSpec(topics=16, topic_affinity=0.0, text_fidelity=1.0,
                                                          cooccurrence=0.7, seed=0))
    assert neighbourly["cooccurrence_hit_rate"] > 1.5 * tasteless["cooccurrence_hit_rate"]
    assert tasteless["text_neighbour_lift"] < 1.02 < 1.05 < neighbourly["text_neighbour_lift"]  # co-reviewed items
    # read alike: the neighbourhood's text names it, as an artist's albums' reviews name the artist


def test_random_neighbourhoods_with_real_text_keep_cooccurrence_but_no_review_names_them(sample_real):
    knobs = dict(topics=16, topic_affinity=0.0, text_fidelity=1.0, cooccurrence=0.7, seed=0)
    named = generated_signals(sample_real, LikeSpec(**knobs))
    unnamed = generated_signals(sample_real, LikeSpec(**knobs, neighbourhoods="random"))
    assert unnamed["cooccurrence_hit_rate"] > 0.5 * named["cooccurrence_hit_rate"]
    assert unnamed["text_neighbour_lift"] < 1.03 < named["text_neighbour_lift"]
    with pytest.raises(DataError, match="neighbourhoods must be one of text, random"):
        LikeSpec(neighbourhoods="topic")


def test_real_text_reuses_the_real_reviews_and_its_fidelity_sets_how_much_they_say_about_the_item(sample_real):
    real_texts = set(sample_real.texts)
    records = list(like_records(sample_real, LikeSpec(topics=16, text_fidelity=1.0, seed=4)))
    assert all(record["reviewText"] in real_texts for record in records)
    by_item: dict[str, set] = {}
    for record in records:
        by_item.setdefault(record["asin"], set()).add(record["reviewText"])
    topics, item_reviews = sample_real.topics(16)
    donors_reviews = [{sample_real.texts[i] for i in own} for own in item_reviews]
    assert all(any(texts <= own for own in donors_reviews) for texts in by_item.values())  # one donor's reviews

    def mean_over_seeds(fidelity: float) -> dict:  # a hit lift over 250 users moves by +-0.3 from seed to seed
        runs = [generated_signals(sample_real, LikeSpec(topics=16, text_fidelity=fidelity, seed=s)) for s in range(3)]
        return {measure: np.mean([run[measure] for run in runs]) for measure in ("text_hit_lift",
                                                                                   "text_neighbour_lift")}

    unrelated, faithful = mean_over_seeds(0.0), mean_over_seeds(1.0)
    assert unrelated["text_hit_lift"] < 1.5 < 2.5 < faithful["text_hit_lift"]
    assert unrelated["text_neighbour_lift"] < 1.02 < 1.1 < faithful["text_neighbour_lift"]
    assert sum(len(members) for members in topics) == len(sample_real.popularity)  # every real item in one topic


def test_the_planted_text_writes_what_it_wrote_before_real_text_came(sample_prepared):
    spec = LikeSpec(text="planted", topics=32, topic_words=2, cooccurrence=0.5, name_words=2, seed=7)
    records = itertools.islice(like_records(real_set(sample_prepared), spec), 2000)
    written = hashlib.sha256("".join(json.dumps(record) + "\n" for record in records).encode()).hexdigest()
    assert written == "656af908728cee05e130253c58868edeb7f82bbd1dbb2615204bd8cda15fa286"  # at 1bdf119, the same spec


def test_real_text_keeps_every_topic_when_the_set_has_fewer_items_than_topics_or_items_alike():
    words = "guitar piano violin drums melody chorus rhythm bass".split()
    texts = [f"{words[item]} {words[item]} song" if item >= 5 else "great album" for item in range(8) for _ in range(3)]
    text_items = np.repeat(np.arange(8), 3)  # 8 items of 3 reviews; items 0-4 say the same words
    real = RealSet(activity=np.full(6, 4), popularity=np.full(8, 3), words=np.full(24, 3),
                   measures={"users": 6, "items": 8}, texts=texts, text_items=text_items)
    topics, reviews = real.topics(6)  # k-means finds 4 distinct clusters, not 6
    assert len(topics) == 6 and all(len(members) for members in topics)
    assert sorted(np.concatenate(topics[:4]).tolist()) == list(range(8))
    assert [r.tolist() for r in reviews[:2]] == [[0, 1, 2], [3, 4, 5]]
    one_each, _ = real.topics(12)  # more topics than items: an item a topic, then shared
    assert [members.tolist() for members in one_each] == [[item % 8] for item in range(12)]
    assert len(list(like_records(real, LikeSpec(topics=12)))) > 0


def test_with_real_text_a_larger_catalogue_has_more_topics_of_the_same_size_within_the_real_clusters(sample_real):
    at_real_size = sample_real.measures["items"]  # 120 (the fixture's third of the sample)
    assert generated_topics(sample_real, LikeSpec(topics=16), at_real_size) == 16
    assert generated_topics(sample_real, LikeSpec(topics=16), 4 * at_real_size) == 64
    assert generated_topics(sample_real, LikeSpec(topics=16), 100 * at_real_size) == 361  # one real item a topic
    assert generated_topics(sample_real, LikeSpec(text="planted", topics=16), 4 * at_real_size) == 16
    records = list(like_records(sample_real, LikeSpec(topics=16, text_fidelity=1.0, topic_affinity=1.0, scale=4.0)))
    clusters, _ = sample_real.topics(16)  # the real set's text clusters stay the fitted 16
    cluster_of = {}
    for cluster, members in enumerate(clusters):
        for item in members:
            cluster_of.setdefault(int(item), cluster)
    cluster_of_text = {}
    for text, item in zip(sample_real.texts, sample_real.text_items):
        cluster_of_text.setdefault(text, cluster_of[int(item)])
    by_user: dict[str, set] = {}
    for record in records:  # a user's two preferred topics (of 64) lie in two of the 16 clusters, or one
        by_user.setdefault(record["reviewerID"], set()).add(cluster_of_text[record["reviewText"]])
    assert np.mean([len(found) <= 2 for found in by_user.values()]) > 0.9  # 0.75 with donors from 64 clusters (a
    # few texts are in several items)


def test_the_generator_refuses_knobs_it_does_not_have_or_the_text_does_not_read(small_prepared, tmp_path):
    with pytest.raises(DataError, match="no knob named topic_word "):
        write_like(small_prepared, tmp_path / "bad.json.gz", LikeSpec(), grid={"topic_word": (0, 16)})
    with pytest.raises(DataError, match="text_fidelity only apply with text real, not planted"):
        fit_signals(real_set(small_prepared), {}, LikeSpec(text="planted"), grid={"text_fidelity": (0.0, 1.0)})
    assert not list(tmp_path.iterdir())
    runner = CliRunner()
    for flags, message in ((["--text", "planted", "--text-fidelity", "0.5"], "--text-fidelity only apply with --text "
                                                                              "real"),
                           (["--text", "bogus"], "--text must be one of real, planted (got 'bogus')")):
        refused = runner.invoke(app, ["generate", str(tmp_path / "x.json.gz"), "--like", str(small_prepared), *flags])
        assert refused.exit_code != 0 and message in refused.output, flags
    assert not list(tmp_path.iterdir())


def test_the_fit_recovers_the_knobs_that_generated_a_set_at_seeds_it_never_saw(sample_real):
    truth = LikeSpec(text="planted", topics=16, topic_words=4, cooccurrence=0.35, seed=50)
    target = generated_signals(sample_real, truth)
    start = LikeSpec(text="planted", topics=16, topic_words=16, cooccurrence=0.7, seed=5, scale=2.0)
    fitted, tried = fit_signals(sample_real, target, start, grid={"topic_words": (0, 4, 16),
                                                                 "cooccurrence": (0.0, 0.35, 0.7)})
    assert (fitted.topic_words, fitted.cooccurrence, fitted.scale, fitted.seed) == (4, 0.35, 2.0, 5)
    settings = [(t["topic_words"], t["cooccurrence"]) for t in tried]
    assert len(set(settings)) == len(settings)  # each setting measured once, however many descents pass it


def test_write_like_fits_first_and_records_every_setting_tried(small_prepared, tmp_path):
    figures = write_like(small_prepared, tmp_path / "like.json.gz", LikeSpec(), grid={"text_fidelity": (0.0, 1.0)})
    best = min(figures["fit"]["tried"], key=lambda t: t["distance"])
    assert figures["settings"]["text_fidelity"] == best["text_fidelity"] and len(figures["fit"]["tried"]) == 2
    assert figures["fit"]["distance_while_fitting"] == best["distance"]
    assert figures["fit"]["distance_at_unseen_seed"] > 0  # the written seed is not one the fit averaged over
    assert figures["fit"]["knobs"] == ["text_fidelity"] and "text_fidelity (given)" not in figures["not_fitted"]
    with pytest.raises(DataError, match="topic_words only apply with text planted, not real"):
        write_like(small_prepared, tmp_path / "bad.json.gz", LikeSpec(), grid={"topic_words": (0, 16)})
    assert not (tmp_path / "bad.json.gz").exists()
    for side in ("real", "generated"):
        assert set(figures[side]["signals"]) >= {"popularity_hit_rate", "cooccurrence_hit_rate", "text_hit_lift",
                                                  "text_neighbour_lift"}


def test_knobs_given_on_the_command_line_are_kept_and_only_the_others_fitted(small_prepared, tmp_path,
                                                                               monkeypatch):
    monkeypatch.setitem(SIGNAL_GRIDS, "planted", {"topic_words": (0, 16), "name_words": (0, 2)})
    runner = CliRunner()
    result = runner.invoke(app, ["generate", str(tmp_path / "k.json.gz"), "--like", str(small_prepared),
                                 "--text", "planted", "--topic-words", "4", "--scale", "0.2"])
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "k.json.gz.like.json").read_text())
    assert figures["settings"]["topic_words"] == 4 and figures["fit"]["knobs"] == ["name_words"]
    assert "topic_words (given)" in figures["not_fitted"]
    mixed = runner.invoke(app, ["generate", str(tmp_path / "m.json.gz"), "--like", str(small_prepared),
                                "--topic-words", "4"])
    assert mixed.exit_code != 0 and "--topic-words only apply with --text planted" in mixed.output
    for flags in (["--scale", "2"], ["--shape", "3", "4", "5"], ["--no-fit"], ["--name-words", "2"],
                  ["--text", "planted"], ["--text-fidelity", "0.5"]):
        refused = runner.invoke(app, ["generate", str(tmp_path / "n.json.gz"), *flags])
        assert refused.exit_code != 0 and "only apply with --like" in refused.output, flags


def test_a_shape_sets_users_items_and_reviews_instead_of_a_scale(small_prepared, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["generate", str(tmp_path / "shaped.json.gz"), "--like", str(small_prepared),
                                 "--shape", "300", "500", "6000", "--no-fit"])
    assert result.exit_code == 0, result.output
    generated = json.loads((tmp_path / "shaped.json.gz.like.json").read_text())["generated"]
    assert generated["users"] == 300 and 400 < generated["items"] <= 500
    assert abs(generated["reviews"] - 6000) <= 300  # activity stretched by one factor (20 a user, not the real 6)
    refused = runner.invoke(app, ["generate", str(tmp_path / "z.json.gz"), "--like", str(small_prepared),
                                  "--shape", "300", "500", "6000", "--scale", "2", "--no-fit"])
    assert refused.exit_code != 0 and "give a scale or a shape" in refused.output
