"""Next-sentence-prediction pairs for BERT pre-training, built as seeded pure functions over a `datasets.Dataset`.

BERT's NSP objective (label 0 = IsNext, 1 = NotNext, as `BertForPreTraining` expects): sentence B follows sentence A
in the same review half the time, and is a sentence of another review otherwise. A review with a single sentence
cannot give an IsNext pair, so it pairs with a random other review. Labels are assigned up front so that the
pairs are balanced even when many reviews have one sentence. Every random choice derives from (seed, row index),
so the pairs do not depend on batching or on the number of worker processes.

    ds = Dataset.from_dict({"text": texts})
    pairs = build_nsp_dataset(ds, seed=42)      # columns: text_a, text_b, next_sentence_label
"""

from __future__ import annotations

import re

import numpy as np
from datasets import Dataset

IS_NEXT, NOT_NEXT = 0, 1

# A sentence ends at . ! ? (runs included, closing quotes kept) followed by whitespace, or glued to the next
# sentence's capital letter as Amazon text often is ("the best time.It's great"). Decimals ("3.5") and
# lowercase abbreviations ("e.g. this") without a following capital do not split.
_BOUNDARY = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+|(?<=[a-z0-9][.!?])(?=[A-Z])|\n+")
_HAS_WORD = re.compile(r"\w")


def split_sentences(text: str) -> list[str]:
    """Split review text into sentences; pieces without a word character (e.g. "...") are dropped."""
    pieces = (p.strip() for p in _BOUNDARY.split(text or ""))
    return [p for p in pieces if p and _HAS_WORD.search(p)]


def assign_labels(n_sentences: np.ndarray, seed: int) -> np.ndarray:
    """Balanced NSP labels: IsNext for half of all rows (where possible), chosen among reviews with >= 2 sentences."""
    n_sentences = np.asarray(n_sentences)
    labels = np.full(len(n_sentences), NOT_NEXT, dtype=np.int64)
    multi = np.flatnonzero(n_sentences >= 2)
    rng = np.random.default_rng([seed, 0])
    chosen = rng.permutation(multi)[: min(len(multi), len(n_sentences) // 2)]
    labels[chosen] = IS_NEXT
    return labels


def make_pair(
    sentences: list[str], label: int, index: int, *, seed: int, pool: list[list[str]]
) -> tuple[str, str]:
    """(A, B) for one review: B is A's successor (IsNext) or a sentence of another review (NotNext).

    `pool` holds every row's sentences, so the NotNext partner comes from the same training corpus.
    """
    rng = np.random.default_rng([seed, 1, index])
    if label == IS_NEXT:
        cut = int(rng.integers(1, len(sentences)))
        return sentences[cut - 1], sentences[cut]
    a = sentences[int(rng.integers(len(sentences)))]
    if len(pool) < 2:
        raise ValueError("NSP needs at least two reviews to draw a NotNext partner")
    other = int(rng.integers(len(pool) - 1))
    other += other >= index  # any row but this one
    partner = pool[other]
    return a, partner[int(rng.integers(len(partner)))]


def build_nsp_dataset(texts: Dataset, *, seed: int, text_column: str = "text") -> Dataset:
    """One NSP pair per review with at least one sentence: columns text_a, text_b, next_sentence_label."""
    with_sentences = texts.map(
        lambda row: {"sentences": split_sentences(row[text_column])},
        remove_columns=texts.column_names,
        desc="splitting sentences",
    ).filter(lambda row: len(row["sentences"]) > 0)
    if with_sentences.num_rows < 2:
        raise ValueError(f"NSP needs at least two reviews with text, got {with_sentences.num_rows}")
    pool = with_sentences["sentences"]
    labels = assign_labels(np.array([len(s) for s in pool]), seed)
    with_sentences = with_sentences.add_column("next_sentence_label", labels.tolist())

    def to_pair(row: dict, index: int) -> dict:
        """Row `index`'s (text_a, text_b) for its label, drawn by `make_pair`."""
        a, b = make_pair(row["sentences"], row["next_sentence_label"], index, seed=seed, pool=pool)
        return {"text_a": a, "text_b": b}

    return with_sentences.map(to_pair, with_indices=True, remove_columns=["sentences"], desc="building NSP pairs")


def tokenize_pairs(pairs: Dataset, tokenizer, max_length: int) -> Dataset:
    """[CLS] A [SEP] B [SEP] with token types; the special-token mask keeps the MLM collator off [CLS]/[SEP]."""

    def encode(batch: dict) -> dict:
        """Tokenise a batch of (text_a, text_b) pairs, truncated longest first to `max_length`."""
        return tokenizer(
            batch["text_a"],
            batch["text_b"],
            truncation="longest_first",
            max_length=max_length,
            return_special_tokens_mask=True,
        )

    return pairs.map(encode, batched=True, remove_columns=["text_a", "text_b"], desc="tokenizing NSP pairs")
