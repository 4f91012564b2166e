"""Everything the HTTP service answers from, loaded once: model, prepared ids, cache, review text and vectors.

`load_served` does all file reading and all compatibility checks up front (a model whose cache or prepared data
does not match stops here, before a port is opened), so the request handlers in `app.py` only look things up and
score. Review text and training-review vectors are kept to explain a recommendation in words: the user's training
review and the item's training review whose vectors agree best.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow.compute as pc

from pipeline.data.prepared import PreparedData, load_prepared, load_reviews
from pipeline.embeddings.cache import Profiles, load_profiles, load_review_embeddings
from pipeline.io import DataError
from pipeline.serve.schema import SNIPPET_CHARS
from pipeline.ranking.recommend import known_pairs, popular_items, read_index, resolve_prepared_path
from pipeline.ranking.training.sampling import PairSet
from pipeline.ranking.checkpoint import RUN_FILE, Checkpoint, load_checkpoint, resolve_cache_path

log = logging.getLogger(__name__)



@dataclass
class ReviewText:
    """Training-split reviews: who wrote what about which item, and (for text models) each review's vector."""

    users: np.ndarray  # (n,) int64
    items: np.ndarray  # (n,) int64
    ratings: np.ndarray  # (n,) float32, NaN where missing
    times: np.ndarray  # (n,) int64 unix seconds
    texts: list[str]
    snippets: list[str]  # each text with runs of white space made one space, cut to SNIPPET_CHARS
    vectors: np.ndarray | None  # (n, dim) float32, L2-normalised; None for models without a cache
    by_user: dict[int, np.ndarray] = field(default_factory=dict)  # user -> row numbers
    by_item: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass
class ServedModel:
    """A trained run loaded for serving, with everything its requests read (`load_served` builds and cross-checks it).

    Attributes
    ----------
    model_dir, run : The model folder and the run's name.
    checkpoint : The trained model, its settings and the profiles it sees.
    data : The prepared data it was trained on.
    known : Every (user, item) with a known interaction (train, valid or test): never recommended.
    popular : The `popular_fallback` most popular training items, added to every candidate pool.
    reviews : The training reviews, for histories and reasons.
    cache_path : The embedding cache's folder; None for a model that reads no cache.
    profiles : The cache's profiles as written (never the shuffled ablation's); None without a cache.
    index : The cache's FAISS index over item profiles; None without a cache.
    encode : Query text -> (n, dim) vectors with the cache's encoder and pooling; None where /search is off.
    search_note : Why /search is off, or what it encodes with.
    user_lookup, item_lookup : Raw user / item id -> index.
    candidates : Nearest items retrieved from the index per user before re-ranking.
    popular_fallback : How many popular items `popular` was asked for.
    """

    model_dir: Path
    run: str
    checkpoint: Checkpoint
    data: PreparedData
    known: PairSet  # every (user, item) with a known interaction: never recommended
    popular: np.ndarray  # popular training items, for candidate pools
    reviews: ReviewText
    cache_path: Path | None
    profiles: Profiles | None  # the cache's item profiles as written (never the shuffled ablation's)
    index: object | None  # FAISS index over item profiles
    encode: Callable[[list[str]], np.ndarray] | None  # query text -> (n, dim), the cache's encoder and pooling
    search_note: str  # why /search is off, or what it uses
    user_lookup: dict[str, int]
    item_lookup: dict[str, int]
    candidates: int = 100
    popular_fallback: int = 100

    @property
    def is_text_model(self) -> bool:
        """Whether the model reads an embedding cache (so /similar works and /recommend gives reasons)."""
        return self.profiles is not None


def snippet(text: str) -> str:
    """A review as the page shows it: one line, at most SNIPPET_CHARS characters."""
    text = " ".join(text.split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1].rstrip() + "…"


def _group(keys: np.ndarray) -> dict[int, np.ndarray]:
    order = np.argsort(keys, kind="stable")
    bounds = np.flatnonzero(np.diff(keys[order])) + 1
    return {int(keys[g[0]]): g for g in np.split(order, bounds) if len(g)}


def load_review_text(data: PreparedData, cache_path: Path | None) -> ReviewText:
    """Training reviews only: the served explanations may quote what the model was trained on, nothing held out."""
    table = load_reviews(data.root, ["review_id", "user_idx", "item_idx", "rating", "time", "text", "split"])
    table = table.filter(pc.equal(table.column("split"), "train"))
    vectors = None
    if cache_path is not None:
        ids, all_vectors = load_review_embeddings(cache_path, data_fingerprint=data.fingerprint)
        position = {rid: row for row, rid in enumerate(ids.column("review_id").to_pylist())}
        wanted = table.column("review_id").to_pylist()
        missing = [r for r in wanted if r not in position]
        if missing:
            raise DataError(f"{cache_path}: {len(missing)} training reviews of {data.root} have no vector "
                            f"(first review_id {missing[0]}); rerun `bertrs embed` on this data")
        vectors = all_vectors[[position[r] for r in wanted]]
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    users = table.column("user_idx").to_numpy().astype(np.int64)
    items = table.column("item_idx").to_numpy().astype(np.int64)
    texts = table.column("text").to_pylist()
    return ReviewText(
        users=users,
        items=items,
        ratings=table.column("rating").to_numpy(zero_copy_only=False).astype(np.float32),
        times=table.column("time").to_numpy().astype(np.int64),
        texts=texts,
        snippets=[snippet(t) for t in texts],  # once here, not per request: splitting long reviews is slow
        vectors=vectors,
        by_user=_group(users),
        by_item=_group(items),
    )


def load_query_encoder(meta: dict, cache_path: Path, override: str | Path | None = None):
    """The encoder that built the cache, with its pooling and max length, or a reason why it cannot be used.

    The cache records the encoder folder it was built from (`encoder_path`), relative to where `embed` ran; it is
    looked up like the cache itself, and its weights must have the fingerprint the cache recorded, or query
    vectors would not be comparable with the item profiles.
    """
    from pipeline.text.encode import load_encoder
    from pipeline.text.encoders import resolve_encoder, weights_fingerprint

    recorded = str(override or meta.get("encoder_path") or "")
    if not recorded:
        return None, f"{cache_path}/meta.json records no encoder folder; pass --encoder-dir"
    spec = recorded
    if not recorded.startswith("packaged:") and not Path(recorded).is_absolute() and not Path(recorded).exists():
        for parent in cache_path.resolve().parents:
            if (parent / recorded).exists():
                spec = str(parent / recorded)
                break
    try:
        resolved = resolve_encoder(spec)
        if weights_fingerprint(resolved) != meta.get("weights_fingerprint"):
            return None, (f"encoder {spec} has other weights than the ones that built {cache_path} "
                          f"(fingerprint {weights_fingerprint(resolved)} != {meta.get('weights_fingerprint')})")
        encoder = load_encoder(resolved, pooling=meta["pooling"], max_length=int(meta["max_length"]), batch_size=8)
    except DataError as error:
        return None, f"the cache's encoder cannot be loaded: {error}"
    return encoder, f"query text encoded by {spec} ({meta['pooling']} pooling), as the cache's reviews were"


def load_served(
    model_dir: str | Path,
    prepared: str | Path | None = None,
    cache: str | Path | None = None,
    encoder_dir: str | Path | None = None,
    search: bool = True,
    candidates: int = 100,
    popular_fallback: int = 100,
) -> ServedModel:
    """Load and cross-check a model folder, its prepared data and its cache; a mismatch is a `DataError`."""
    model_dir = Path(model_dir)
    if not (model_dir / RUN_FILE).is_file():
        raise DataError(f"{model_dir}: not a model folder ({RUN_FILE} missing; has `bertrs train` finished?)")
    data = load_prepared(resolve_prepared_path(model_dir, "data/prepared", prepared))
    checkpoint = load_checkpoint(model_dir, data, cache_path=cache)
    cache_path = profiles = index = encode = None
    search_note = f"model {checkpoint.spec.model} reads no review text: /similar and /search need a text model"
    if checkpoint.profiles is not None:
        cache_path = resolve_cache_path(model_dir, (checkpoint.info.get("embeddings") or {}).get("path"), cache)
        profiles = load_profiles(cache_path, data_fingerprint=data.fingerprint, n_users=data.n_users,
                                 n_items=data.n_items)
        index = read_index(cache_path)
        if index.ntotal != data.n_items:
            raise DataError(f"{cache_path}/items.faiss: {index.ntotal} items, the prepared data has {data.n_items}")
        search_note = "started with --no-search"
        if search:
            encode, search_note = load_query_encoder(profiles.meta, cache_path, encoder_dir)
            if encode is None:
                log.warning("/search is off: %s", search_note)
    return ServedModel(
        model_dir=model_dir,
        run=str(checkpoint.info.get("run", model_dir.name)),
        checkpoint=checkpoint,
        data=data,
        known=known_pairs(data),
        popular=popular_items(data, popular_fallback),
        reviews=load_review_text(data, cache_path),
        cache_path=cache_path,
        profiles=profiles,
        index=index,
        encode=encode,
        search_note=search_note,
        user_lookup={uid: i for i, uid in enumerate(data.user_ids)},
        item_lookup={iid: i for i, iid in enumerate(data.item_ids)},
        candidates=candidates,
        popular_fallback=popular_fallback,
    )
