"""Ranker-side fixtures (see tests/conftest.py): a small prepared-data folder with a planted topic structure and
embedding caches whose profiles come from generated review "text".

The world: items belong to topics, users prefer one topic and mostly pick items from it. Each review's vector is
the item's topic vector plus heavy noise, so profiles (means over a user's / item's TRAINING reviews only) carry
the preference signal partially, as real text would. Everything is written with the real contracts
(`pipeline.data.prepared` schemas + stats.json, `pipeline.embeddings.writer.write_profiles` + meta.json + a FAISS
index), so the code under test reads it exactly as it reads stage outputs.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.config import RankingConfig, TrainConfig
from pipeline.data.prepared import Interactions, PreparedData
from pipeline.data.prepared import FILES, STATS_FILE, load_prepared
from pipeline.config import BertRSConfig
from pipeline.embeddings.cache import (
    INDEX_FILE, META_FIELDS, META_FILE, REVIEWS_FILE, Profiles, reviews_schema, vectors_to_arrow,
)
from pipeline.embeddings.writer import write_profiles
from pipeline.ranking.registry import load_model_profiles
from pipeline.io import fingerprint_files, write_json, write_table


@dataclass
class World:
    n_users: int
    n_items: int
    item_topic: np.ndarray  # (n_items,)
    user_topic: np.ndarray  # (n_users,)
    splits: dict  # split -> (users, items) int arrays
    review_vectors: dict  # split -> (n, dim) float32, one per interaction, same order as splits
    candidates: dict  # split -> negatives (n, m) int64


def make_world(
    seed: int = 0,
    n_users: int = 400,
    n_items: int = 600,
    n_topics: int = 8,
    per_user: tuple[int, int] = (5, 12),
    in_topic: float = 0.9,
    dim: int = 16,
    noise: float = 0.8,
    n_negatives: int = 99,
) -> World:
    rng = np.random.default_rng(seed)
    item_topic = rng.integers(n_topics, size=n_items)
    user_topic = rng.integers(n_topics, size=n_users)
    popularity = rng.pareto(2.0, size=n_items) + 1.0
    topic_vectors = rng.normal(size=(n_topics, dim))
    topic_vectors /= np.linalg.norm(topic_vectors, axis=1, keepdims=True)
    rows = {"train": [], "valid": [], "test": []}
    for u in range(n_users):
        n = int(rng.integers(per_user[0], per_user[1] + 1))
        n_in = int(rng.binomial(n, in_topic))
        own = np.flatnonzero(item_topic == user_topic[u])
        picks = list(rng.choice(own, size=min(n_in, len(own)), replace=False,
                                p=popularity[own] / popularity[own].sum()))
        rest = np.setdiff1d(np.arange(n_items), picks)
        picks += list(rng.choice(rest, size=n - len(picks), replace=False, p=popularity[rest] / popularity[rest].sum()))
        picks = rng.permutation(picks)
        n_test = max(1, int(round(0.3 * n)))
        parts = {"test": picks[:n_test], "valid": picks[n_test : n_test + 1], "train": picks[n_test + 1 :]}
        for split, items in parts.items():
            rows[split] += [(u, int(i)) for i in items]
    splits, review_vectors, candidates = {}, {}, {}
    positives = {}
    for split, pairs in rows.items():
        arr = np.asarray(pairs, dtype=np.int64)
        splits[split] = (arr[:, 0], arr[:, 1])
        signal = topic_vectors[item_topic[arr[:, 1]]]
        review_vectors[split] = (signal + noise * rng.normal(size=signal.shape) / np.sqrt(dim) * 2).astype(np.float32)
        for u, i in pairs:
            positives.setdefault(u, set()).add(i)
    for split in ("valid", "test"):
        users, _ = splits[split]
        negs = np.empty((len(users), n_negatives), dtype=np.int64)
        for row, u in enumerate(users):
            allowed = np.setdiff1d(np.arange(n_items), list(positives[int(u)]))
            negs[row] = rng.choice(allowed, size=n_negatives, replace=False)
        candidates[split] = negs
    return World(n_users, n_items, item_topic, user_topic, splits, review_vectors, candidates)


def write_prepared(root: Path, world: World) -> str:
    """Write a prepared-data folder with the contract's schemas; returns its fingerprint."""
    root.mkdir(parents=True, exist_ok=True)
    review_rows = {"review_id": [], "user_idx": [], "item_idx": [], "rating": [], "time": [], "text": [], "split": []}
    for split, (users, items) in world.splits.items():
        n = len(users)
        table = pa.table(
            {"user_idx": users, "item_idx": items, "rating": np.full(n, 5.0), "time": np.arange(n, dtype=np.int64)}
        )
        write_table(root / FILES[split][0], table, FILES[split][1])
        review_rows["review_id"] += list(range(len(review_rows["split"]), len(review_rows["split"]) + n))
        review_rows["user_idx"] += users.tolist()
        review_rows["item_idx"] += items.tolist()
        review_rows["rating"] += [5.0] * n
        review_rows["time"] += list(range(n))
        review_rows["text"] += [f"about topic {world.item_topic[i]}" for i in items]
        review_rows["split"] += [split] * n
    write_table(root / FILES["reviews"][0], pa.table(review_rows), FILES["reviews"][1])
    cand = {"split": [], "user_idx": [], "item_idx": [], "negatives": []}
    for split in ("valid", "test"):
        users, items = world.splits[split]
        cand["split"] += [split] * len(users)
        cand["user_idx"] += users.tolist()
        cand["item_idx"] += items.tolist()
        cand["negatives"] += world.candidates[split].tolist()
    write_table(root / FILES["candidates"][0], pa.table(cand), FILES["candidates"][1])
    write_table(
        root / FILES["users"][0],
        pa.table({"user_idx": np.arange(world.n_users), "user_id": [f"U{u}" for u in range(world.n_users)]}),
        FILES["users"][1],
    )
    write_table(
        root / FILES["items"][0],
        pa.table({"item_idx": np.arange(world.n_items), "item_id": [f"I{i}" for i in range(world.n_items)]}),
        FILES["items"][1],
    )
    fingerprint = fingerprint_files(sorted(root.glob("*.parquet")))
    write_json(root / STATS_FILE, {"fingerprint": fingerprint, "n_users": world.n_users, "n_items": world.n_items})
    return fingerprint


def profiles_from_reviews(world: World) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean TRAINING review vector per user and per item; the global mean where there is none."""
    users, items = world.splits["train"]
    vectors = world.review_vectors["train"]
    fallback = vectors.mean(axis=0)

    def pool(index: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        counts = np.bincount(index, minlength=n)
        sums = np.zeros((n, vectors.shape[1]), np.float64)
        np.add.at(sums, index, vectors)
        out = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], fallback)
        return out.astype(np.float32), counts

    u, uc = pool(users, world.n_users)
    i, ic = pool(items, world.n_items)
    return u, i, uc, ic


def write_cache(root: Path, world: World, data_fingerprint: str, weights_fingerprint: str = "w-test") -> Path:
    """An embedding cache folder: profiles, meta.json with every META_FIELDS key, and a FAISS (cosine) index."""
    import faiss

    users, items, uc, ic = profiles_from_reviews(world)
    meta = {
        "encoder": "synthetic-topics",
        "weights_fingerprint": weights_fingerprint,
        "pooling": "mean",
        "max_length": 32,
        "dim": int(users.shape[1]),
        "data_fingerprint": data_fingerprint,
        "profile": "mean",
        "versions": {},
    }
    assert set(META_FIELDS) <= set(meta)
    root.mkdir(parents=True, exist_ok=True)
    write_profiles(root, users, items, uc, ic, meta)
    # the review vectors in the prepared data's review order (write_prepared: train, valid, test, ids 0..n-1)
    split_names = list(world.splits)
    vectors = np.concatenate([world.review_vectors[s] for s in split_names])
    reviews = pa.table({
        "review_id": np.arange(len(vectors), dtype=np.int64),
        "user_idx": np.concatenate([world.splits[s][0] for s in split_names]).astype(np.int32),
        "item_idx": np.concatenate([world.splits[s][1] for s in split_names]).astype(np.int32),
        "split": sum(([s] * len(world.splits[s][0]) for s in split_names), []),
        "embedding": vectors_to_arrow(vectors),
    })
    write_table(root / REVIEWS_FILE, reviews, reviews_schema(int(users.shape[1])))
    (root / META_FILE).write_text(json.dumps(meta))
    normed = items / np.linalg.norm(items, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(normed.shape[1])
    index.add(np.ascontiguousarray(normed, dtype=np.float32))
    faiss.write_index(index, str(root / INDEX_FILE))
    return root


@dataclass
class RankingEnv:
    world: World
    prepared: Path
    cache: Path
    other_cache: Path  # same data, other encoder weights: a checkpoint must refuse it
    config: RankingConfig  # the shared train section and every model's section

    @property
    def data(self):
        return load_prepared(self.prepared)

    def profiles(self, cache: Path | None = None):
        """The cache's profiles as the default bert_rs reads them (recency-weighted user profiles included)."""
        return load_model_profiles(cache or self.cache, self.data, BertRSConfig(solver="dense"), TrainConfig())


# refit off: these fixtures specify what is chosen on the training-only fit and scored on validation; the final
# fit on training + validation pairs (the default) is specified in tests/test_train.py
FAST_TRAIN = RankingConfig(TrainConfig(device="cpu", seed=0, refit_with_validation=False)).override(
    factors=8, mlp_layers=[32, 16, 8], epochs=25, batch_size=128, learning_rate=0.01, patience=5
)


@pytest.fixture(scope="session")
def ranking_env(tmp_path_factory) -> RankingEnv:
    base = tmp_path_factory.mktemp("ranking")
    world = make_world()
    fingerprint = write_prepared(base / "prepared", world)
    cache = write_cache(base / "cache", world, fingerprint)
    other = write_cache(base / "cache_other", world, fingerprint, weights_fingerprint="w-other")
    return RankingEnv(world, base / "prepared", cache, other, FAST_TRAIN)


@pytest.fixture
def torch_single_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine spinning OpenMP workers make
    them ~30x slower; restored afterwards so other tests keep their setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trained_runs(ranking_env):
    """The neural bert_rs, neumf, the neural bert_rs on shuffled profiles and the default (EASE-based) bert_rs,
    trained once per session on the planted world."""
    from pipeline.config import RunSpec
    from pipeline.ranking.training.train import train

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    data, profiles = ranking_env.data, ranking_env.profiles()
    specs = {
        "bert_rs_neural": RunSpec(model="bert_rs_neural", embeddings="synthetic"),
        "neumf": RunSpec(model="neumf"),
        "bert_rs_shuffled": RunSpec(model="bert_rs_neural", embeddings="synthetic", shuffle=True),
        "bert_rs": RunSpec(model="bert_rs", embeddings="synthetic"),
    }
    try:
        return {
            name: (spec, train(spec, ranking_env.config, data, profiles, progress=False))
            for name, spec in specs.items()
        }
    finally:
        torch.set_num_threads(before)


def replace_config(config: RankingConfig, model: str | None = None, **changes) -> RankingConfig:
    """`config` with settings changed by name: in `model`'s section, or in every section that has them."""
    return config.override(model, **changes)


# ------------------------------------------------------------------------------------ helpers shared by test modules

N_USERS, N_ITEMS, DIM = 7, 11, 6  # the hand-checkable world of the formula tests


def in_memory_data(n_users: int, n_items: int, train, valid, test) -> PreparedData:
    """Prepared data held in memory: (users, items) pairs per split, no candidates, ids are the indices."""
    pairs = {name: Interactions(np.asarray(u, dtype=np.int64), np.asarray(i, dtype=np.int64))
             for name, (u, i) in (("train", train), ("valid", valid), ("test", test))}
    return PreparedData(Path("."), n_users, n_items, "in-memory", pairs["train"], pairs["valid"], pairs["test"], {},
                        [str(u) for u in range(n_users)], [str(i) for i in range(n_items)], {})


def tiny_profiles(seed=0) -> Profiles:
    rng = np.random.default_rng(seed)
    return Profiles(
        users=rng.normal(size=(N_USERS, DIM)).astype(np.float32),
        items=rng.normal(size=(N_ITEMS, DIM)).astype(np.float32),
        user_has_reviews=np.ones(N_USERS, bool),
        item_has_reviews=np.ones(N_ITEMS, bool),
        meta={"dim": DIM},
        recent_users=rng.normal(size=(N_USERS, DIM)).astype(np.float32),
    )


def write_train_params(path: Path, epochs: int = 3) -> Path:
    """A params.yaml with two runs (pop, and a neural bert_rs on the `minilm` cache) and a tiny neural section."""
    path.write_text(
        "runs:\n"
        "  pop: {model: pop}\n"
        "text_runs:\n"
        "  bert_rs: {model: bert_rs_neural, embeddings: minilm}\n"
        "train:\n"
        "  device: cpu\n"
        "models:\n"
        "  bert_rs_neural:\n"
        f"    factors: 8\n    mlp_layers: [16, 8]\n    epochs: {epochs}\n    batch_size: 256\n    learning_rate: 0.01\n"
    )
    return path


def with_test_positives_moved(data: PreparedData) -> PreparedData:
    """The same data with every test positive moved to another item its user never interacted with (the most
    popular such item, so that it competes near the top of any ranking); train and valid are untouched. Whatever
    is chosen on validation must not notice."""
    known: dict[int, set[int]] = {}
    for part in (data.train, data.valid, data.test):
        for u, i in zip(part.users.tolist(), part.items.tolist()):
            known.setdefault(u, set()).add(i)
    by_popularity = np.argsort(-np.bincount(data.train.items, minlength=data.n_items), kind="stable").tolist()
    moved = []
    for u in data.test.users.tolist():
        item = next(i for i in by_popularity if i not in known[u])
        known[u].add(item)
        moved.append(item)
    test = Interactions(data.test.users.copy(), np.asarray(moved, dtype=np.int64))
    assert not np.any(test.items == data.test.items)
    return dataclasses.replace(data, test=test, candidates={"valid": data.candidates["valid"]})


class Untouchable:
    """Stands in for a split that must not be read: any use raises."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute):
        raise AssertionError(f"the {self._name} split was read ({attribute})")

    def __len__(self):
        raise AssertionError(f"the {self._name} split was read (len)")
