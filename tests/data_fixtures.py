"""Data fixtures: generated review dumps and prepared folders, plus the location of the shared real data."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import PrepareConfig
from pipeline.data.prepare import prepare_dataset
from pipeline.data.synthetic import SyntheticSpec, write_synthetic

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BUNDLED_SAMPLE = REPO / "data" / "sample"

SMALL_SPEC = SyntheticSpec(n_users=60, n_items=40, n_topics=4, reviews_per_user=7, seed=3)


def small_prepare_config(**overrides) -> PrepareConfig:
    base = dict(min_user_reviews=3, min_item_reviews=2, k_core=True, max_users=None,
                protocol="leave_one_out", eval_negatives=20, seed=7)
    base.update(overrides)
    return PrepareConfig(**base)


@pytest.fixture(scope="session")
def synthetic_dump(tmp_path_factory) -> Path:
    """A small generated Amazon 2018 dump (gzipped JSON lines)."""
    return write_synthetic(tmp_path_factory.mktemp("raw") / "synthetic.json.gz", SMALL_SPEC)


@pytest.fixture(scope="session")
def prepared_dir(tmp_path_factory, synthetic_dump) -> Path:
    """The synthetic dump prepared with leave-one-out splits: a complete `prepare` output folder."""
    out = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare_dataset(small_prepare_config(), [synthetic_dump], out)
    return out


def shared_file(relative: str) -> Path:
    """A file of ../shared/data, or skip: a user's clone has no ../shared."""
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"{path} not present (only developers and CI have ../shared/data)")
    return path
