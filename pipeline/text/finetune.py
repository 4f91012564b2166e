"""Adapt a BERT encoder to the review corpus with BERT's own objectives: MLM + NSP (`BertForPreTraining`).

Only training-split reviews are used (`training_texts`): valid and test reviews never reach the encoder, so the
ranker's held-out interactions cannot leak through the text. A held-out slice of the *training* reviews measures
MLM loss, perplexity and NSP accuracy before and after training.

Training runs through the HF `Trainer`. Its checkpoints live in a work folder beside the output folder (DVC deletes
a stage's outputs before rerunning it), keyed by a fingerprint of the config, base weights and training text, so
an interrupted run resumes where it stopped and a changed config starts fresh. A resumed run ends with the same
bytes as an uninterrupted one: the NSP pairs are a seeded pure function of the texts, a batch's masks are seeded by
its pair ids, data order by the sampler's seed and epoch, and dropout by the torch RNG state the Trainer restores
from the checkpoint.

The same call runs unchanged under `torchrun --nproc_per_node N` or `accelerate launch` (the Trainer's DDP):
`batch_size` is the global batch, split over the processes; every process measures before/after on the whole
held-out set (so metrics are global, not per rank); only the first process writes the output folder.
The final folder follows `pipeline/text/encoder_dir.py` (a `BertModel` without pre-training heads) and is written
atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from datasets import Dataset

from pipeline.config import ConfigError, FinetuneConfig, to_dict
from pipeline.io import DataError, atomic_dir, default_work_dir, write_json
from pipeline.launch import is_main_process, launched_processes
from pipeline.text.encoder_dir import SOURCE_FILE, encoder_module, normalize_model_config, normalize_tokenizer_config
from pipeline.text.encoders import resolve_encoder, weights_fingerprint
from pipeline.text.nsp import build_nsp_dataset, tokenize_pairs

log = logging.getLogger(__name__)

SOURCE_FILE = SOURCE_FILE  # the contract's name, still importable from here for older readers
# pair_id: the pair's row number, from which its masks are drawn (see SeededMasking); the collator drops it
NSP_COLUMNS = ["pair_id", "input_ids", "token_type_ids", "attention_mask", "special_tokens_mask",
               "next_sentence_label"]


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
    train, heldout = (d.add_column("pair_id", list(range(d.num_rows))) for d in (train, heldout))
    return train.select_columns(NSP_COLUMNS), heldout.select_columns(NSP_COLUMNS)


def make_collator(tokenizer, config: FinetuneConfig, seed: Optional[int] = None):
    """BERT masking (15%, 80/10/10); extra keys such as `next_sentence_label` are padded through as tensors.

    The masks of a batch are a pure function of (seed, the batch's pair ids), not of a generator's running state:
    a resumed run, which starts a fresh process, draws the same masks as an uninterrupted one (the Trainer
    restores the torch RNG only after it has collated the first resumed batch). A new epoch orders pairs into
    new batches, and so draws new masks."""
    from transformers import DataCollatorForLanguageModeling

    class SeededMasking(DataCollatorForLanguageModeling):
        """`DataCollatorForLanguageModeling` whose masks are drawn from a generator seeded by (seed, the batch's pair
        ids)."""

        def torch_call(self, examples):
            """Collate `examples` as the base class does, after dropping their `pair_id`s and seeding the masking
            from them."""
            examples = [dict(e) for e in examples]
            pair_ids = [int(e.pop("pair_id")) for e in examples if "pair_id" in e]
            if pair_ids:
                batch_seed = np.random.SeedSequence([self.seed, *pair_ids]).generate_state(1)[0]
                self.generator = torch.Generator().manual_seed(int(batch_seed))
                self._generator_pid = os.getpid()
            return super().torch_call(examples)

    return SeededMasking(tokenizer=tokenizer, mlm=True, mlm_probability=config.mlm_probability,
                         seed=config.seed if seed is None else seed)


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


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 in /proc/cpuinfo: bf16 matmuls then run in hardware instead of being emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def mixed_precision(precision: str) -> str | None:
    """'bf16', 'fp16' or None (fp32) for the Trainer, from finetune.precision and the hardware."""
    cuda = torch.cuda.is_available()
    if precision == "fp32":
        return None
    if precision == "bf16":
        return "bf16"
    if cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    # CPUs stay fp32 under auto until bf16 curves are shown to match fp32 on a native-bf16 CPU
    # (benchmarks/results/finetune_bf16.md: unfinished on an AVX2 CPU, where bf16 is emulated and ~11x slower)
    return None


def per_process_batch(batch_size: int, key: str) -> int:
    """The global batch split over the processes, so N processes take the same steps as one."""
    n = launched_processes()
    if batch_size % n:
        raise ConfigError(f"{key}: {batch_size} is not divisible by the {n} processes of this run")
    return batch_size // n


def trainer_settings(config: FinetuneConfig, output_dir: Path, n_train: int, batch_size: int,
                     grad_accum_steps: int = 1) -> dict[str, Any]:
    """The `TrainingArguments` both adaptation objectives share: schedule, seeding, checkpointing for resume,
    mixed precision per `finetune.precision`. `batch_size` is per process."""
    cuda = torch.cuda.is_available()
    precision = mixed_precision(config.precision)
    per_epoch = max(1, math.ceil(n_train / (batch_size * launched_processes() * grad_accum_steps)))
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
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        dataloader_num_workers=0,
        use_cpu=not cuda,
        ddp_backend="gloo" if launched_processes() > 1 and not cuda else None,  # CPU processes talk over gloo
    )


def training_arguments(config: FinetuneConfig, output_dir: Path, n_train: int):
    """The `TrainingArguments` of MLM + NSP: `trainer_settings` at `finetune.batch_size` split over the processes,
    keeping every dataset column for the collator. `n_train`: the training pairs, for the schedule."""
    from transformers import TrainingArguments

    return TrainingArguments(
        **trainer_settings(config, output_dir, n_train, per_process_batch(config.batch_size, "finetune.batch_size"),
                           config.grad_accum_steps),
        disable_tqdm=False,
        remove_unused_columns=False,  # keep special_tokens_mask: the collator must not mask [CLS]/[SEP]
    )


def fresh_run_dir(work: Path, name: str) -> Path:
    """`work/name`, created; any other run folder under `work` (another config or corpus) is removed by the first
    process, so a resume never picks up foreign checkpoints."""
    run_dir = work / name
    for stale in work.glob("*") if work.is_dir() and is_main_process() else []:
        if stale != run_dir:
            shutil.rmtree(stale, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def last_complete_checkpoint(run_dir: Path) -> str | None:
    """The newest checkpoint-N in `run_dir` that the Trainer finished writing. It writes a checkpoint's files one by
    one, trainer_state.json last, so a folder without that file is what a kill during a save left behind: resuming
    from it fails, and it is passed over for the one before."""
    from transformers.trainer import TRAINER_STATE_NAME

    numbered = [(int(p.name.split("-", 1)[1]), p) for p in Path(run_dir).glob("checkpoint-*")
                if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    for _, folder in sorted(numbered, reverse=True):
        if (folder / TRAINER_STATE_NAME).is_file():
            return str(folder)
        log.warning("%s: a checkpoint left half-written (no %s); resuming from an earlier one", folder,
                    TRAINER_STATE_NAME)
    return None


def train_resuming(trainer, run_dir: Path):
    """`trainer.train()`, resumed from the newest complete checkpoint in `run_dir` if there is one.
    -> (result, checkpoint)"""
    resume = last_complete_checkpoint(run_dir)
    if resume:
        log.info("resuming from %s", resume)
    return trainer.train(resume_from_checkpoint=resume), resume


def save_encoder(model, tokenizer, out: Path, source: dict) -> None:
    """The encoder folder (see encoder_dir.py): `BertModel` weights without pre-training heads, tokenizer without
    load-time options, source.json; renamed into place as a whole."""
    with atomic_dir(out) as tmp:
        encoder_module(model).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        normalize_tokenizer_config(tmp)
        normalize_model_config(tmp)
        write_json(tmp / SOURCE_FILE, source)


def finish_run(trainer, write, work: Path) -> None:
    """The first process writes the output (`write()`) and removes the work folder; the others wait for it, so
    that no process exits while the output is half-written."""
    if trainer.is_world_process_zero():
        write()
        shutil.rmtree(work, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()


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
        data_collator=make_collator(tokenizer, config),  # masks seeded by the pair ids of each batch
        callbacks=callbacks,
    )
    result, resume = train_resuming(trainer, run_dir)
    # wall time goes to the log only: the returned metrics are a DVC-tracked file, and a clock reading in it would
    # make every rerun of the same inputs look like a changed output
    log.info("trained %d steps in %.1f s", result.global_step, float(result.metrics.get("train_runtime", float("nan"))))
    after = evaluate_pretraining(model, eval_ds, make_collator(tokenizer, config, seed=config.seed), eval_batch)
    log.info("after: %s", after)

    source = {"base": base, "base_weights_fingerprint": base_fp, "finetuned": True,
              "finetune": to_dict(config)}
    finish_run(trainer, lambda: save_encoder(model.cpu(), tokenizer, out, source), work)
    return {
        "finetuned": True,
        "base": base,
        "base_weights_fingerprint": base_fp,
        "weights_fingerprint": weights_fingerprint(out),
        "processes": launched_processes(),
        "precision": mixed_precision(config.precision) or "fp32",
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

