"""A static encoder: a transformer distilled into token vectors by the finetune stage, averaged by the embed stage."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from pipeline.config import ConfigError, EmbedConfig
from pipeline.embeddings import cache
from pipeline.embeddings.build import build_cache
from pipeline.io import DataError
from pipeline.text.encoders import weights_fingerprint
from pipeline.text.static import STATIC_BACKEND, distill_static, is_static, load_static
from tests.text_fixtures import TOY_REVIEWS

pytest.importorskip("model2vec")
pytest.importorskip("skeletoken")  # model2vec's distillation

CONFIG = EmbedConfig(max_length=32, batch_size=4, shard_size=4, threads=1, backend="auto", pooling="mean")


def finetune_app():
    from stages import finetune

    app = typer.Typer()
    app.command("finetune")(finetune.main)
    app.command("noop")(lambda: None)
    return app


def static_params(path: Path, encoder_dir: Path, pooling: str = "mean") -> Path:
    path.write_text(f"encoders:\n  tiny_static:\n    model: {encoder_dir}\n    finetune: false\n    static: true\n"
                    f"    pooling: {pooling}\n")
    return path


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def static_dir(toy_prepared, tiny_encoder_dir, tmp_path) -> Path:
    """The finetune stage's output for a static encoder on the tiny BERT."""
    params = static_params(tmp_path / "params.yaml", tiny_encoder_dir)
    args = ["finetune", "--prepared", str(toy_prepared), "--encoder", "tiny_static", "--out", str(tmp_path / "enc"),
            "--metrics", str(tmp_path / "m.json"), "--params", str(params)]
    result = CliRunner().invoke(finetune_app(), args)
    assert result.exit_code == 0, result.output
    return tmp_path / "enc"


def test_the_finetune_stage_writes_a_static_encoder_and_records_what_it_was_distilled_from(static_dir, tmp_path,
                                                                                           tiny_encoder_dir):
    assert is_static(static_dir) and not is_static(tiny_encoder_dir)
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["weights_fingerprint"] == weights_fingerprint(static_dir)
    assert metrics["static"]["distilled_from_weights_fingerprint"] == weights_fingerprint(tiny_encoder_dir)
    assert json.loads((static_dir / "source.json").read_text()) == {"base": str(tiny_encoder_dir),
                                                                   "finetuned": False, "static": True}
    assert not Path(f"{static_dir}.work").exists()  # the transformer it started from is let go
    # beside source.json (which names the base, as every encoder's does) nothing says where it was written
    written = [p for p in static_dir.iterdir() if p.name != "source.json"]
    assert str(tmp_path) not in "".join(p.read_text(errors="ignore") for p in written)


def test_distilling_the_same_transformer_twice_writes_the_same_bytes(tiny_encoder_dir, tmp_path):
    distill_static(tiny_encoder_dir, tmp_path / "a")
    distill_static(tiny_encoder_dir, tmp_path / "b")
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


def test_a_static_encoder_encodes_a_review_as_the_unit_mean_of_its_token_vectors(static_dir):
    encoder = load_static(static_dir, max_length=32)
    texts = [r[3] for r in TOY_REVIEWS[:4]]
    vectors = encoder.encode(texts)
    assert vectors.shape == (4, encoder.dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-3)
    # the same review alone gives the same vector: no batch effects, no padding
    np.testing.assert_allclose(encoder.encode(texts[1:2])[0], vectors[1], rtol=1e-6)
    assert not np.allclose(vectors[0], vectors[1])


def test_a_cache_of_a_static_encoder_follows_the_cache_contract(toy_prepared, static_dir, tmp_path):
    meta = build_cache(toy_prepared, str(static_dir), "tiny_static", CONFIG, tmp_path / "c", progress=False)
    assert meta["backend"] == STATIC_BACKEND and meta["pooling"] == "mean"
    assert meta["backend_check"]["sample"] == 0 and meta["weights_fingerprint"] == weights_fingerprint(static_dir)
    profiles = cache.load_profiles(tmp_path / "c")
    assert profiles.items.shape[1] == meta["dim"] == load_static(static_dir).dim
    table, vectors = cache.load_review_embeddings(tmp_path / "c")
    texts = {row: text for row, (_, _, _, text) in enumerate(TOY_REVIEWS)}
    order = (table.column("review_id").to_numpy() - 7) // 10  # the toy ids are 10 x row + 7
    expected = load_static(static_dir, max_length=CONFIG.max_length).encode([texts[int(i)] for i in order])
    np.testing.assert_allclose(vectors, expected, rtol=1e-6)


def test_a_static_encoder_with_another_pooling_is_refused_naming_the_setting(static_dir, tiny_encoder_dir, tmp_path):
    with pytest.raises(DataError, match="pooling 'pooler' does not apply"):
        load_static(static_dir, pooling="pooler")
    with pytest.raises(DataError, match="not a static encoder"):
        load_static(tiny_encoder_dir)
    from pipeline.config import load_params

    with pytest.raises(ConfigError, match=r"encoders\.tiny_static\.pooling: a static encoder pools by the mean"):
        load_params(static_params(tmp_path / "p.yaml", tiny_encoder_dir, pooling="pooler"))
    shared = tmp_path / "shared.yaml"
    shared.write_text(static_params(tmp_path / "s.yaml", tiny_encoder_dir).read_text() + f"  tiny:\n    model: "
                      f"{tiny_encoder_dir}\n    pooling: mean\nembed:\n  shared_passes: {{tiny: tiny_static}}\n")
    with pytest.raises(ConfigError, match=r"encoders\.tiny_static\.static: a static encoder has its own pass"):
        load_params(shared)
