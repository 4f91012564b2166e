"""`bertrs generate --like`: a synthetic set shaped like a real prepared one, with both sets' measures beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.config import load_params
from pipeline.data.likeness import LikeSpec, NOT_FITTED, gini, write_like
from pipeline.data.prepare import prepare_dataset
from stages.cli import app
from tests.data_fixtures import BUNDLED_SAMPLE

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sample_prepared(tmp_path_factory) -> Path:
    """The bundled Digital Music sample, prepared with the default params (756 users, 361 items, 4,566 reviews)."""
    out = tmp_path_factory.mktemp("like") / "prepared"
    prepare_dataset(load_params(REPO / "params.yaml").prepare, [BUNDLED_SAMPLE], out)
    return out


def test_a_set_generated_like_the_sample_has_its_size_activity_popularity_and_review_lengths(sample_prepared,
                                                                                             tmp_path):
    figures = write_like(sample_prepared, tmp_path / "like.json.gz", LikeSpec(seed=3))
    real, generated = figures["real"], figures["generated"]
    assert (real["users"], real["items"], real["reviews"]) == (756, 361, 4566)
    assert generated["users"] == real["users"] and abs(generated["items"] - real["items"]) <= real["items"] * 0.02
    assert abs(generated["reviews"] - real["reviews"]) <= real["reviews"] * 0.1
    for measure in ("user_activity", "review_words"):
        for point in ("p25", "median", "p75"):
            assert abs(generated[measure][point] - real[measure][point]) <= max(1.0, 0.15 * real[measure][point]), \
                (measure, point)
    assert abs(generated["item_popularity_gini"] - real["item_popularity_gini"]) <= 0.1
    assert figures["not_fitted"] == list(NOT_FITTED)
    assert json.loads((tmp_path / "like.json.gz.like.json").read_text()) == figures


def test_the_generated_dump_prepares_like_any_review_dump_and_doubles_with_scale(sample_prepared, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["generate", str(tmp_path / "like.json.gz"), "--like", str(sample_prepared),
                                 "--scale", "2", "--seed", "1"])
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "like.json.gz.like.json").read_text())
    assert figures["generated"]["users"] == 2 * figures["real"]["users"]
    stats = prepare_dataset(load_params(REPO / "params.yaml").prepare, [tmp_path / "like.json.gz"], tmp_path / "p")
    assert stats["table1"]["reviews"] > 0.8 * figures["generated"]["reviews"]  # the 3-core keeps nearly all of it
    refused = runner.invoke(app, ["generate", str(tmp_path / "x.json.gz"), "--like", str(sample_prepared),
                                  "--users", "10"])
    assert refused.exit_code != 0 and "use --scale" in refused.output
    missing = runner.invoke(app, ["generate", str(tmp_path / "y.json.gz"), "--like", str(tmp_path / "nowhere")])
    assert missing.exit_code != 0 and "nowhere/reviews.parquet: file not found" in missing.output


def test_gini_is_zero_for_equal_counts_and_grows_with_concentration():
    assert gini([5, 5, 5, 5]) == pytest.approx(0.0)
    assert gini([1, 1, 1, 97]) > gini([10, 20, 30, 40]) > 0.0
