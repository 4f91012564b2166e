"""Contrastive encoder adaptation (issue 7's option beyond MLM+NSP): pull a user's reviews toward the items they chose.

Pairs come from the *training split only*: for a training review that user u wrote about item j (the anchor), the
positive is a training review that *another* user wrote about another item i that u also chose. In-batch
negatives (MultipleNegativesRankingLoss, sentence-transformers) push the anchor away from the other pairs' items.
After training, text written by a user lies near text written about items that user goes on to choose, which is
the similarity `bert_rs` reads (user profiles against item profiles, item against item).

No valid or test review, and no held-out interaction, reaches a pair: the ranker's evaluation cannot leak through
the encoder. A held-out slice of training *users* measures, before and after, how often an anchor's own positive is
the nearest of the held-out positives (retrieval accuracy@1).

Training runs through `SentenceTransformerTrainer` (mean pooling, as the packaged MiniLM was trained), resumable
from the checkpoints in `<out>.work/` exactly like MLM+NSP fine-tuning; the saved folder is a plain `BertModel`
checkpoint plus tokenizer plus `source.json`, so `embed` reads it like any other encoder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import Dataset

from pipeline.config import FinetuneConfig, to_dict
from pipeline.io import DataError
from pipeline.text.encoders import resolve_encoder, weights_fingerprint
from pipeline.text.finetune import (
    default_work_dir,
    finish_run,
    fresh_run_dir,
    mixed_precision,
    per_process_batch,
    run_key,
    save_encoder,
    train_resuming,
    trainer_settings,
)
from pipeline.launch import launched_processes

log = logging.getLogger(__name__)

PAIR_COLUMNS = ("review_id", "user_idx", "item_idx", "text", "split")


def user_item_pairs(reviews: pa.Table, seed: int, users: np.ndarray | None = None) -> Dataset:
    """(anchor, positive) texts from training reviews: u's review of j, and another user's review of an item
    i != j that u also chose. `users` restricts anchors to those users. Deterministic for a seed."""
    missing = [c for c in PAIR_COLUMNS if c not in reviews.column_names]
    if missing:
        raise DataError(f"reviews: column {missing[0]!r} missing (need {', '.join(PAIR_COLUMNS)})")
    train = reviews.filter(pc.equal(reviews.column("split"), "train"))
    user = train.column("user_idx").to_numpy().astype(np.int64)
    item = train.column("item_idx").to_numpy().astype(np.int64)
    texts = train.column("text").to_pylist()
    by_user: dict[int, list[int]] = {}
    by_item: dict[int, list[int]] = {}
    for row, (u, i) in enumerate(zip(user, item)):
        by_user.setdefault(int(u), []).append(row)
        by_item.setdefault(int(i), []).append(row)
    rng = np.random.default_rng([seed, 7])
    allowed = None if users is None else set(int(u) for u in users)
    anchors, positives = [], []
    for row in rng.permutation(len(user)):
        u, j = int(user[row]), int(item[row])
        if allowed is not None and u not in allowed:
            continue
        chosen = [r for r in by_user[u] if item[r] != j]
        if not chosen:
            continue
        i = int(item[chosen[rng.integers(len(chosen))]])
        written_by_others = [r for r in by_item[i] if user[r] != u]
        if not written_by_others:
            continue
        anchors.append(texts[row])
        positives.append(texts[written_by_others[rng.integers(len(written_by_others))]])
    return Dataset.from_dict({"anchor": anchors, "positive": positives})


def split_users(reviews: pa.Table, config: FinetuneConfig) -> tuple[np.ndarray, np.ndarray]:
    """Training users and held-out users (for the before/after retrieval check): whole users, never pairs."""
    train = reviews.filter(pc.equal(reviews.column("split"), "train"))
    users = np.unique(train.column("user_idx").to_numpy())
    n_eval = min(max(2, int(round(len(users) * config.eval_share))), len(users) - 2)
    order = np.random.default_rng([config.seed, 3]).permutation(users)
    return np.sort(order[n_eval:]), np.sort(order[:n_eval])


@torch.inference_mode()
def retrieval_accuracy(model, pairs: Dataset, batch_size: int) -> dict[str, float]:
    """How often each anchor's own positive is its nearest positive among all held-out positives (cosine)."""
    if pairs.num_rows < 2:
        return {"accuracy@1": float("nan"), "pairs": pairs.num_rows}
    anchors = model.encode(pairs["anchor"], batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True)
    positives = model.encode(pairs["positive"], batch_size=batch_size, convert_to_tensor=True,
                             normalize_embeddings=True)
    nearest = (anchors @ positives.T).argmax(1).cpu()
    return {"accuracy@1": float((nearest == torch.arange(pairs.num_rows)).float().mean()), "pairs": pairs.num_rows,
            "chance": 1.0 / pairs.num_rows}


def load_sentence_model(resolved: str, max_length: int, seed: int):
    """The encoder with mean pooling as a `SentenceTransformer` (its own pooler, if any, is kept but unused)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import set_seed

    set_seed(seed)
    try:
        word = Transformer(resolved, max_seq_length=max_length)
    except OSError as error:
        raise DataError(f"{resolved}: cannot load a BERT checkpoint ({error})") from None
    pooling = Pooling(word.get_embedding_dimension(), pooling_mode="mean")
    return SentenceTransformer(modules=[word, pooling], device="cuda" if torch.cuda.is_available() else "cpu")


def training_arguments(config: FinetuneConfig, output_dir: Path, n_pairs: int):
    """The `SentenceTransformerTrainingArguments` of the contrastive objective: `trainer_settings` at
    `finetune.contrastive_batch_size` split over the processes, with batches that never repeat a text (a repeat would
    be a false in-batch negative). `n_pairs`: the training pairs, for the schedule."""
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    return SentenceTransformerTrainingArguments(
        **trainer_settings(config, output_dir, n_pairs,
                           per_process_batch(config.contrastive_batch_size, "finetune.contrastive_batch_size"),
                           config.grad_accum_steps),
        batch_sampler=BatchSamplers.NO_DUPLICATES,  # a repeated text in a batch would be a false negative
    )


def contrastive_finetune(
    reviews: pa.Table,
    base: str,
    out: str | Path,
    config: FinetuneConfig,
    *,
    work_dir: str | Path | None = None,
    callbacks: list | None = None,
) -> dict[str, Any]:
    """Adapt `base` with user-item contrastive pairs from training reviews; returns before/after retrieval metrics."""
    from sentence_transformers import SentenceTransformerTrainer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    out = Path(out)
    resolved = resolve_encoder(base)
    base_fp = weights_fingerprint(resolved)
    model = load_sentence_model(resolved, config.max_length, config.seed)
    train_users, eval_users = split_users(reviews, config)
    train_pairs = user_item_pairs(reviews, config.seed, train_users)
    eval_pairs = user_item_pairs(reviews, config.seed + 1, eval_users)
    eval_pairs = eval_pairs.select(range(min(eval_pairs.num_rows, config.max_eval_pairs)))
    if train_pairs.num_rows < 2:
        raise DataError(f"reviews: {train_pairs.num_rows} contrastive pairs; users need two training reviews")

    pair_texts = Dataset.from_dict({"text": list(train_pairs["anchor"]) + list(train_pairs["positive"])})
    key = run_key(config, base_fp, pair_texts)
    work = Path(work_dir) if work_dir is not None else default_work_dir(out)
    run_dir = fresh_run_dir(work, f"contrastive-{key}")

    eval_batch = max(config.contrastive_batch_size, 32)
    before = retrieval_accuracy(model, eval_pairs, eval_batch)
    log.info("before: %s", before)
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_arguments(config, run_dir, train_pairs.num_rows),
        train_dataset=train_pairs,
        loss=MultipleNegativesRankingLoss(model),
        callbacks=callbacks,
    )
    result, resume = train_resuming(trainer, run_dir)
    after = retrieval_accuracy(model, eval_pairs, eval_batch)
    log.info("after: %s", after)

    word = model[0]
    source = {"base": base, "base_weights_fingerprint": base_fp, "finetuned": True,
              "objective": "contrastive", "finetune": to_dict(config)}
    finish_run(trainer, lambda: save_encoder(word.auto_model.cpu(), word.tokenizer, out, source), work)
    return {
        "finetuned": True,
        "objective": "contrastive",
        "base": base,
        "base_weights_fingerprint": base_fp,
        "weights_fingerprint": weights_fingerprint(out),
        "processes": launched_processes(),
        "precision": mixed_precision(config.precision) or "fp32",
        "train_pairs": train_pairs.num_rows,
        "eval_pairs": eval_pairs.num_rows,
        "steps": int(result.global_step),
        "resumed_from": Path(resume).name if resume else None,
        "train_loss": float(result.training_loss),
        "before": before,
        "after": after,
    }
