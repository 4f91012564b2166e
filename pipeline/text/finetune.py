"""Adapt a BERT encoder to the review corpus with BERT's own objectives: MLM + NSP (`BertForPreTraining`).

Only training-split reviews are used (`training_texts`): valid and test reviews never reach the encoder, so the
ranker's held-out interactions cannot leak through the text. A held-out slice of the *training* reviews measures
MLM loss, perplexity and NSP accuracy before and after training.

Training runs through the HF `Trainer`. Its checkpoints live in a work folder beside the output folder (DVC deletes
a stage's outputs before rerunning it), keyed by a fingerprint of the config, base weights and training text, so
an interrupted run resumes where it stopped and a changed config starts fresh. The final folder is written
atomically and is a plain `BertModel` checkpoint (safetensors) plus tokenizer plus `source.json`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import Dataset

from pipeline.config import FinetuneConfig, to_dict
from pipeline.io import DataError, atomic_dir, write_json
from pipeline.text.encoders import resolve_encoder, weights_fingerprint
from pipeline.text.nsp import build_nsp_dataset, tokenize_pairs

log = logging.getLogger(__name__)

# provenance of an encoder folder: base spec, its weights fingerprint, finetuned or not. No absolute path: the folder
# must hash the same in every clone, or dvc.lock would change on every machine.
SOURCE_FILE = "source.json"
NSP_COLUMNS = ["input_ids", "token_type_ids", "attention_mask", "special_tokens_mask", "next_sentence_label"]


# ----------------------------------------------------------------------------------------------------------------
# data


def training_texts(reviews: pa.Table) -> Dataset:
    """The training-split reviews as a `Dataset` (review_id, text): the only text the encoder may see."""
    for column in ("review_id", "text", "split"):
        if column not in reviews.column_names:
            raise DataError(f"reviews: column {column!r} missing (need review_id, text, split)")
    train = reviews.filter(pc.equal(reviews.column("split"), "train")).select(["review_id", "text"])
    if train.num_rows < 4:
        raise DataError(f"reviews: {train.num_rows} training-split reviews; fine-tuning needs at least 4")
    return Dataset(train)


def split_heldout(texts: Dataset, config: FinetuneConfig) -> tuple[Dataset, Dataset]:
    """Hold out whole reviews (not pairs), so no sentence of an evaluation review is trained on."""
    n_eval = min(max(2, int(round(texts.num_rows * config.eval_share))), config.max_eval_pairs, texts.num_rows - 2)
    order = np.random.default_rng([config.seed, 2]).permutation(texts.num_rows)
    return texts.select(np.sort(order[n_eval:])), texts.select(np.sort(order[:n_eval]))


def nsp_datasets(reviews: pa.Table, tokenizer, config: FinetuneConfig) -> tuple[Dataset, Dataset]:
    """Tokenised NSP pairs for training and held-out evaluation, from training-split reviews only."""
    train_texts, eval_texts = split_heldout(training_texts(reviews), config)
    train = tokenize_pairs(build_nsp_dataset(train_texts, seed=config.seed), tokenizer, config.max_length)
    heldout = tokenize_pairs(build_nsp_dataset(eval_texts, seed=config.seed + 1), tokenizer, config.max_length)
    return train.select_columns(NSP_COLUMNS), heldout.select_columns(NSP_COLUMNS)


def make_collator(tokenizer, config: FinetuneConfig, seed: Optional[int] = None):
    """BERT masking (15%, 80/10/10); extra keys such as `next_sentence_label` are padded through as tensors."""
    from transformers import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(
        tokenizer=tokenizer, mlm=True, mlm_probability=config.mlm_probability, seed=seed
    )


# ----------------------------------------------------------------------------------------------------------------
# model


def load_pretraining_model(resolved: str, seed: int):
    """`BertForPreTraining` from any BERT checkpoint; heads it lacks are initialised fresh (seeded) and logged."""
    from transformers import AutoTokenizer, BertForPreTraining, set_seed

    set_seed(seed)
    try:
        model, info = BertForPreTraining.from_pretrained(resolved, output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(resolved)
    except OSError as error:
        raise DataError(f"{resolved}: cannot load a BERT checkpoint ({error})") from None
    fresh = sorted(info.get("missing_keys", []))
    heads = sorted({".".join(k.split(".")[:2]) for k in fresh})
    if fresh:
        log.info("initialised fresh (absent from %s): %s (%d tensors)", resolved, ", ".join(heads), len(fresh))
    return model, tokenizer, fresh


@torch.inference_mode()
def evaluate_pretraining(model, dataset: Dataset, collator, batch_size: int) -> dict[str, float]:
    """Token-weighted MLM loss, perplexity and NSP accuracy on `dataset` (masks fixed by the collator's seed)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    loss_sum, n_tokens, n_correct, n_pairs = 0.0, 0, 0, 0
    rows = dataset.to_list()
    for start in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collator(rows[start : start + batch_size]).items()}
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
        )
        labels = batch["labels"]
        logits = out.prediction_logits.float()
        loss_sum += float(torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1),
                                                            ignore_index=-100, reduction="sum"))
        n_tokens += int((labels != -100).sum())
        n_correct += int((out.seq_relationship_logits.argmax(-1) == batch["next_sentence_label"]).sum())
        n_pairs += len(labels)
    model.train(was_training)
    mlm_loss = loss_sum / max(n_tokens, 1)
    return {
        "mlm_loss": mlm_loss,
        "perplexity": math.exp(min(mlm_loss, 50.0)),
        "nsp_accuracy": n_correct / max(n_pairs, 1),
        "pairs": n_pairs,
        "masked_tokens": n_tokens,
    }


# ----------------------------------------------------------------------------------------------------------------
# run


def run_key(config: FinetuneConfig, base_fingerprint: str, texts: Dataset) -> str:
    """Identifies a training run: resuming is only allowed from checkpoints of the same key."""
    digest = hashlib.sha256(json.dumps(to_dict(config), sort_keys=True).encode())
    digest.update(base_fingerprint.encode())
    for text in texts["text"]:
        digest.update(text.encode())
    return digest.hexdigest()[:16]


def default_work_dir(out: Path) -> Path:
    return out.with_name(f"{out.name}.work")


def trainer_settings(config: FinetuneConfig, output_dir: Path, n_train: int, batch_size: int,
                     grad_accum_steps: int = 1) -> dict[str, Any]:
    """The `TrainingArguments` both adaptation objectives share: schedule, seeding, checkpointing for resume,
    mixed precision on CUDA only."""
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    per_epoch = max(1, math.ceil(n_train / (batch_size * grad_accum_steps)))
    total = config.max_steps if config.max_steps > 0 else math.ceil(per_epoch * config.epochs)
    return dict(
        output_dir=str(output_dir),
        max_steps=config.max_steps if config.max_steps > 0 else -1,
        num_train_epochs=config.epochs,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum_steps,
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        warmup_steps=int(config.warmup_ratio * total),
        seed=config.seed,
        data_seed=config.seed,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        logging_steps=max(1, min(50, total // 10)),
        report_to="none",
        bf16=bf16,
        fp16=cuda and not bf16,
        dataloader_num_workers=0,
        use_cpu=not cuda,
    )


def training_arguments(config: FinetuneConfig, output_dir: Path, n_train: int):
    from transformers import TrainingArguments

    return TrainingArguments(
        **trainer_settings(config, output_dir, n_train, config.batch_size, config.grad_accum_steps),
        disable_tqdm=False,
        remove_unused_columns=False,  # keep special_tokens_mask: the collator must not mask [CLS]/[SEP]
    )


def fresh_run_dir(work: Path, name: str) -> Path:
    """`work/name`, created; any other run folder under `work` (another config or corpus) is removed, so a resume
    never picks up foreign checkpoints."""
    run_dir = work / name
    for stale in work.glob("*") if work.is_dir() else []:
        if stale != run_dir:
            shutil.rmtree(stale, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def train_resuming(trainer, run_dir: Path):
    """`trainer.train()`, resumed from the newest checkpoint in `run_dir` if there is one. -> (result, checkpoint)"""
    from transformers.trainer_utils import get_last_checkpoint

    resume = get_last_checkpoint(str(run_dir))
    if resume:
        log.info("resuming from %s", resume)
    return trainer.train(resume_from_checkpoint=resume), resume


def save_encoder(model, tokenizer, out: Path, source: dict) -> None:
    """Model (safetensors) + tokenizer + source.json, renamed into place as a whole."""
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / SOURCE_FILE, source)


def finetune_encoder(
    reviews: pa.Table,
    base: str,
    out: str | Path,
    config: FinetuneConfig,
    *,
    work_dir: str | Path | None = None,
    callbacks: list | None = None,
) -> dict[str, Any]:
    """MLM+NSP fine-tuning of `base` on the training-split reviews; returns before/after metrics.

    `callbacks` are extra `TrainerCallback`s (tests use one to simulate an interruption).
    """
    from transformers import Trainer

    out = Path(out)
    resolved = resolve_encoder(base)
    base_fp = weights_fingerprint(resolved)
    model, tokenizer, fresh = load_pretraining_model(resolved, config.seed)
    train_ds, eval_ds = nsp_datasets(reviews, tokenizer, config)
    key = run_key(config, base_fp, training_texts(reviews))
    work = Path(work_dir) if work_dir is not None else default_work_dir(out)
    run_dir = fresh_run_dir(work, key)

    eval_batch = max(config.batch_size, 32)
    before = evaluate_pretraining(model, eval_ds, make_collator(tokenizer, config, seed=config.seed), eval_batch)
    log.info("before: %s", before)

    trainer = Trainer(
        model=model,
        args=training_arguments(config, run_dir, train_ds.num_rows),
        train_dataset=train_ds,
        data_collator=make_collator(tokenizer, config),
        callbacks=callbacks,
    )
    result, resume = train_resuming(trainer, run_dir)
    after = evaluate_pretraining(model, eval_ds, make_collator(tokenizer, config, seed=config.seed), eval_batch)
    log.info("after: %s", after)

    source = {"base": base, "base_weights_fingerprint": base_fp, "finetuned": True,
              "finetune": to_dict(config)}
    save_encoder(model.cpu(), tokenizer, out, source)
    shutil.rmtree(work, ignore_errors=True)
    return {
        "finetuned": True,
        "base": base,
        "base_weights_fingerprint": base_fp,
        "weights_fingerprint": weights_fingerprint(out),
        "fresh_parameters": fresh,
        "train_pairs": train_ds.num_rows,
        "eval_pairs": eval_ds.num_rows,
        "steps": int(result.global_step),
        "resumed_from": Path(resume).name if resume else None,
        "train_loss": float(result.training_loss),
        "before": before,
        "after": after,
    }


def pass_through(base: str, out: str | Path, reason: str) -> dict[str, Any]:
    """Save the base checkpoint unchanged (as `BertModel` + tokenizer) so `embed` always reads the same layout."""
    from transformers import AutoTokenizer, BertModel

    out = Path(out)
    resolved = resolve_encoder(base)
    base_fp = weights_fingerprint(resolved)
    model = BertModel.from_pretrained(resolved)
    tokenizer = AutoTokenizer.from_pretrained(resolved)
    save_encoder(model, tokenizer, out, {"base": base, "base_weights_fingerprint": base_fp, "finetuned": False})
    log.info("fine-tuning skipped (%s): base checkpoint passed through to %s", reason, out)
    return {"finetuned": False, "note": f"fine-tuning skipped: {reason}; base checkpoint passed through",
            "base": base, "base_weights_fingerprint": base_fp, "weights_fingerprint": weights_fingerprint(out)}

