"""The FAISS index type follows the catalogue: exact below index_exact_below items, approximate from there on,
with the search settings stored in the file and recall close to exact search."""

import numpy as np
import pytest

from pipeline.config import EmbedConfig
from pipeline.embeddings.build import index_choice
from pipeline.embeddings.index import IndexChoice, build_index, index_type, read_index, search, write_index
from pipeline.io import DataError


def clustered(n, dim=32, clusters=20, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    return (centres[rng.integers(0, clusters, n)] + 0.25 * rng.standard_normal((n, dim))).astype(np.float32)


def test_auto_picks_exact_for_small_catalogues_and_hnsw_for_large_ones():
    choice = IndexChoice(index_type="auto", exact_below=500)
    assert index_type(build_index(clustered(499), "cosine", choice)) == "flat"
    assert index_type(build_index(clustered(500), "cosine", choice)) == "hnsw"
    assert index_type(build_index(clustered(500), "ip", choice)) == "ivf"  # HNSW links by a metric; ip is none
    assert index_type(build_index(clustered(600), "cosine", IndexChoice(index_type="ivf"))) == "ivf"
    assert index_type(build_index(clustered(600), "cosine")) == "flat"  # no choice: exact, as before
    with pytest.raises(DataError, match="embed.index_type"):
        IndexChoice(index_type="lsh")


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_recall_against_exact_search(kind, tmp_path):
    items, queries = clustered(5000), clustered(200, seed=1)
    exact = search(build_index(items, "cosine"), queries, 50)[1]
    index = build_index(items, "cosine", IndexChoice(index_type=kind, nprobe=16, ef_search=1024))
    write_index(index, tmp_path / "items.faiss")
    loaded = read_index(tmp_path / "items.faiss")  # nprobe / efSearch travel with the file
    found = search(loaded, queries, 50)[1]
    recall = np.mean([len(np.intersect1d(f, e)) / 50 for f, e in zip(found, exact)])
    assert recall >= 0.95, recall
    if kind == "ivf":
        assert loaded.nprobe == 16 and loaded.nlist == int(2 * np.sqrt(5000))
        coarse = build_index(items, "cosine", IndexChoice(index_type="ivf", nprobe=1))
        assert np.mean([len(np.intersect1d(f, e)) / 50 for f, e in zip(search(coarse, queries, 50)[1], exact)]) < recall


def test_every_index_type_returns_cosine_scores():
    items, queries = clustered(3000), clustered(5, seed=2)
    exact_scores, exact_ids = search(build_index(items, "cosine"), queries, 5)
    for kind in ("ivf", "hnsw"):
        scores, ids = search(build_index(items, "cosine", IndexChoice(index_type=kind, nprobe=64)), queries, 5)
        same = ids == exact_ids
        np.testing.assert_allclose(scores[same], exact_scores[same], atol=1e-5)


def test_a_wider_hnsw_build_links_a_graph_that_recalls_more_at_the_same_search_width():
    items, queries = clustered(4000, dim=48, clusters=4), clustered(200, dim=48, clusters=4, seed=1)
    exact = search(build_index(items, "cosine"), queries, 50)[1]

    def recall(ef_construction):
        choice = IndexChoice(index_type="hnsw", hnsw_m=4, ef_search=50, ef_construction=ef_construction)
        index = build_index(items, "cosine", choice)
        assert index.hnsw.efConstruction == ef_construction
        return np.mean([len(np.intersect1d(f, e)) / 50 for f, e in zip(search(index, queries, 50)[1], exact)])

    narrow, wide = recall(4), recall(200)
    assert wide > narrow + 0.05, (narrow, wide)


def test_every_index_setting_of_the_embed_section_reaches_the_index_builder():
    config = EmbedConfig(index_type="hnsw", index_exact_below=7, index_nlist=11, index_nprobe=3, index_hnsw_m=5,
                         index_ef_search=13, index_ef_construction=17)
    assert index_choice(config) == IndexChoice(index_type="hnsw", exact_below=7, nlist=11, nprobe=3, hnsw_m=5,
                                               ef_search=13, ef_construction=17)
