"""Embedding cache: profiles from training reviews only, round trip, mismatch errors, resume, index, stage CLI."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from pipeline.embeddings import cache, writer
from pipeline.embeddings.engines.local import write_embedding_cache
from pipeline.embeddings.index import build_index, read_index, search, write_index
from pipeline.embeddings.profiles import ProfileAccumulator, mean_profiles, weighted_user_means
from pipeline.io import DataError
from tests.text_fixtures import TOY_REVIEWS

DIM = 4


def fake_encode(texts):
    """Deterministic text -> vector, so expected profiles can be computed by hand."""
    return np.array([[len(t), t.count(" "), t.count("."), sum(map(ord, t)) % 7] for t in texts], np.float32)


def _meta(data_fingerprint="toyfp01"):
    return {"encoder": "fake", "weights_fingerprint": "w0", "pooling": "pooler", "max_length": 16, "dim": DIM,
            "data_fingerprint": data_fingerprint, "profile": "mean", "backend": "torch"}


def _write(prepared, out, **kwargs):
    kwargs.setdefault("shard_size", 4)
    return write_embedding_cache(out, prepared / "reviews.parquet", kwargs.pop("encode", fake_encode),
                                       meta=_meta(), n_users=6, n_items=5, progress=False, **kwargs)


def test_profiles_are_means_over_training_reviews_only(toy_prepared, tmp_path):
    _write(toy_prepared, tmp_path / "cache")
    profiles = cache.load_profiles(tmp_path / "cache", data_fingerprint="toyfp01", n_users=6, n_items=5, dim=DIM)
    train = [r for r in TOY_REVIEWS if r[2] == "train"]
    vectors = fake_encode([r[3] for r in train]).astype(np.float64)
    for u in range(6):
        rows = [k for k, r in enumerate(train) if r[0] == u]
        expected = vectors[rows].mean(0) if rows else vectors.mean(0)  # fallback: mean of all training vectors
        np.testing.assert_allclose(profiles.users[u], expected, rtol=1e-6)
        assert profiles.user_has_reviews[u] == bool(rows)
    assert not profiles.user_has_reviews[5] and not profiles.item_has_reviews[4]
    # user 0's test review (with the marker) changes nothing: drop it and the profile is the same
    np.testing.assert_allclose(profiles.users[0], vectors[[0, 1]].mean(0), rtol=1e-6)


def test_mean_profiles_ignore_non_training_splits():
    vectors = np.array([[1.0, 0.0], [3.0, 2.0], [100.0, 100.0]], np.float32)
    tables = mean_profiles(np.array([0, 0, 0]), np.array([0, 1, 1]), np.array(["train", "train", "test"]),
                           vectors, 2, 3)
    np.testing.assert_allclose(tables.users[0], [2.0, 1.0])
    np.testing.assert_allclose(tables.items[1], [3.0, 2.0])
    np.testing.assert_allclose(tables.items[2], [2.0, 1.0])  # no training review: fallback
    assert tables.item_counts.tolist() == [1, 1, 0] and tables.user_counts.tolist() == [2, 0]
    normed = mean_profiles(np.array([0]), np.array([0]), np.array(["train"]), vectors[:1] * 5, 1, 1, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(normed.users, axis=1), 1.0)


def test_a_batch_with_a_bad_index_changes_neither_profile_table():
    accumulator = ProfileAccumulator(n_users=2, n_items=2, dim=2)
    accumulator.add(np.array([0]), np.array([0]), np.array(["train"]), np.array([[1.0, 1.0]]))
    with pytest.raises(ValueError, match=r"item_idx out of range \[0, 2\): 0..2"):
        accumulator.add(np.array([1, 1]), np.array([0, 2]), np.array(["train", "train"]), np.array([[5.0, 5], [7, 7]]))
    tables = accumulator.finalize()
    assert tables.user_counts.tolist() == [1, 0] and tables.item_counts.tolist() == [1, 0]
    np.testing.assert_allclose(tables.users, [[1.0, 1.0], [1.0, 1.0]])  # user 1: the fallback of user 0's review alone
    np.testing.assert_allclose(tables.items, [[1.0, 1.0], [1.0, 1.0]])


def test_a_user_without_weight_gets_the_weighted_mean_of_every_review():
    vectors = np.array([[4.0, 0.0], [0.0, 4.0], [2.0, 2.0], [0.0, 8.0]])
    means = weighted_user_means(np.array([0, 0, 1, 2]), vectors, np.array([3.0, 1.0, 0.0, 4.0]), n_users=4)
    np.testing.assert_allclose(means[0], [3.0, 1.0])  # (3 * (4, 0) + 1 * (0, 4)) / 4
    np.testing.assert_allclose(means[2], [0.0, 8.0])
    # (3 * (4, 0) + (0, 4) + 4 * (0, 8)) / 8: user 1's only review weighs 0, user 3 has none
    np.testing.assert_allclose(means[1], [1.5, 4.5])
    np.testing.assert_allclose(means[3], [1.5, 4.5])
    with pytest.raises(ValueError, match="no training review with weight > 0"):
        weighted_user_means(np.array([0]), vectors[:1], np.array([0.0]), n_users=1)


def test_cache_round_trip_keeps_ids_vectors_and_meta(toy_prepared, tmp_path):
    meta = _write(toy_prepared, tmp_path / "cache")
    table, vectors = cache.load_review_embeddings(tmp_path / "cache", data_fingerprint="toyfp01", dim=DIM)
    source = pq.read_table(toy_prepared / "reviews.parquet")
    assert table.column("review_id").to_pylist() == source.column("review_id").to_pylist()
    assert table.column("split").to_pylist() == source.column("split").to_pylist()
    np.testing.assert_array_equal(vectors, fake_encode(source.column("text").to_pylist()))
    assert cache.read_meta(tmp_path / "cache") == meta
    assert set(cache.META_FIELDS) <= set(meta)
    for name in (cache.REVIEWS_FILE, cache.USER_PROFILES_FILE, cache.ITEM_PROFILES_FILE):
        stored = json.loads(pq.read_schema(tmp_path / "cache" / name).metadata[cache.META_KEY])
        assert stored == meta
    assert pq.ParquetFile(tmp_path / "cache" / cache.REVIEWS_FILE).metadata.num_row_groups == 4  # 16 reviews / 4
    assert not writer.default_partial_dir(tmp_path / "cache").exists()
    info = cache.cache_info(tmp_path / "cache")
    assert info["meta"]["encoder"] == "fake" and info["files"][cache.REVIEWS_FILE]["rows"] == len(TOY_REVIEWS)


def test_mismatched_cache_is_rejected_with_clear_message(toy_prepared, tmp_path):
    _write(toy_prepared, tmp_path / "cache")
    with pytest.raises(DataError, match="other prepared data.*toyfp01.*otherfp"):
        cache.load_profiles(tmp_path / "cache", data_fingerprint="otherfp")
    with pytest.raises(DataError, match="dimension 4 differs from the expected 8"):
        cache.load_profiles(tmp_path / "cache", dim=8)
    with pytest.raises(DataError, match="3 users in the cache|6 users in the cache"):
        cache.load_profiles(tmp_path / "cache", n_users=3)
    with pytest.raises(DataError, match="not an embedding cache"):
        cache.read_meta(tmp_path)


def test_interrupted_embed_resumes_and_matches_uninterrupted(toy_prepared, tmp_path):
    calls = []

    def counting(texts):
        calls.append(len(texts))
        return fake_encode(texts)

    def kill_after_shard_1(k):
        if k == 1:
            raise KeyboardInterrupt

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        _write(toy_prepared, out, encode=counting, on_shard=kill_after_shard_1)
    assert not out.exists()  # never a cache that looks complete
    assert len(list(writer.default_partial_dir(out).rglob("shard-*.parquet"))) == 2
    calls.clear()
    resumed = _write(toy_prepared, out, encode=counting)
    assert calls == [4, 4]  # only the two missing shards were encoded
    straight = _write(toy_prepared, tmp_path / "straight")
    assert resumed == straight
    for name in (cache.REVIEWS_FILE, cache.USER_PROFILES_FILE, cache.ITEM_PROFILES_FILE, cache.META_FILE):
        # byte-identical, so DVC sees the same cache whether it was resumed, rerun or built in another clone
        assert (out / name).read_bytes() == (tmp_path / "straight" / name).read_bytes()


def test_changed_config_does_not_resume_stale_shards(toy_prepared, tmp_path):
    out = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        _write(toy_prepared, out, on_shard=lambda k: (_ for _ in ()).throw(KeyboardInterrupt))
    calls = []
    write_embedding_cache(out, toy_prepared / "reviews.parquet", lambda t: calls.append(1) or fake_encode(t),
                                meta=_meta() | {"pooling": "mean"}, n_users=6, n_items=5, shard_size=4, progress=False)
    assert len(calls) == 4  # every shard re-encoded


def test_index_search_returns_nearest_items(tmp_path):
    items = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    write_index(build_index(items, "cosine"), tmp_path / "i.faiss")
    scores, ids = search(read_index(tmp_path / "i.faiss"), np.array([[2.0, 0.1]]), k=2, metric="cosine")
    assert ids[0].tolist() == [0, 2] and scores[0, 0] == pytest.approx(0.9988, abs=1e-3)
    _, ids_ip = search(build_index(items, "ip"), np.array([[1.0, 1.0]]), k=1, metric="ip")
    assert ids_ip[0].tolist() == [2]


def test_embed_stage_cli_and_cache_info(toy_prepared, tiny_encoder_dir, tmp_path):
    from stages import embed

    app = typer.Typer()
    app.command("embed")(embed.main)
    app.command("info")(embed.cache_info)
    params = tmp_path / "params.yaml"
    params.write_text("embed:\n  max_length: 32\n  batch_size: 4\n  shard_size: 8\n  threads: 1\n")
    out = tmp_path / "emb"
    result = CliRunner().invoke(app, ["embed", "--prepared", str(toy_prepared), "--encoder-dir", str(tiny_encoder_dir),
                                      "--name", "tiny", "--out", str(out), "--params", str(params)])
    assert result.exit_code == 0, result.output
    profiles = cache.load_profiles(out, data_fingerprint="toyfp01", n_users=6, n_items=5, dim=32)
    assert profiles.meta["encoder"] == "tiny" and profiles.meta["pooling"] == "pooler"
    assert profiles.meta["source_model"] == str(tiny_encoder_dir)
    assert read_index(out / cache.INDEX_FILE).ntotal == 5
    info = CliRunner().invoke(app, ["info", str(out)])
    assert info.exit_code == 0 and json.loads(info.output)["meta"]["weights_fingerprint"]
    missing = CliRunner().invoke(app, ["info", str(tmp_path)])
    assert missing.exit_code == 2 and "not an embedding cache" in missing.output
