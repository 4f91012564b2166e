"""NSP pair building: sentence splitting, well-formed and balanced pairs, determinism."""

from __future__ import annotations

import numpy as np
from datasets import Dataset

from pipeline.text.nsp import IS_NEXT, NOT_NEXT, assign_labels, build_nsp_dataset, split_sentences


def test_split_sentences_handles_glued_amazon_text():
    text = "Great album. I loved it!And the best time.It's great... Rated 3.5 of 5.\nSo \"good.\" Next"
    assert split_sentences(text) == [
        "Great album.", "I loved it!", "And the best time.", "It's great...", "Rated 3.5 of 5.", 'So "good."', "Next"]
    assert split_sentences("") == [] and split_sentences("...") == []


def _corpus(n: int = 40) -> list[str]:
    rng = np.random.default_rng(0)
    texts = []
    for r in range(n):
        k = int(rng.integers(1, 5))
        texts.append(" ".join(f"Review{r} sentence{s}." for s in range(k)))
    return texts


def test_pairs_well_formed_and_balanced():
    texts = _corpus()
    pairs = build_nsp_dataset(Dataset.from_dict({"text": texts}), seed=3)
    assert pairs.column_names == ["next_sentence_label", "text_a", "text_b"] or set(pairs.column_names) == {
        "next_sentence_label", "text_a", "text_b"}
    labels = np.array(pairs["next_sentence_label"])
    assert len(pairs) == len(texts)
    assert abs((labels == IS_NEXT).sum() - (labels == NOT_NEXT).sum()) <= 1
    for row in pairs:
        ra, sa = row["text_a"].split()[0], int(row["text_a"].split("sentence")[1].rstrip("."))
        rb, sb = row["text_b"].split()[0], int(row["text_b"].split("sentence")[1].rstrip("."))
        if row["next_sentence_label"] == IS_NEXT:
            assert ra == rb and sb == sa + 1  # B follows A in the same review
        else:
            assert ra != rb  # B comes from another review


def test_single_sentence_reviews_pair_with_other_reviews():
    texts = ["Only one."] * 3 + ["First here. Second here."] * 3
    pairs = build_nsp_dataset(Dataset.from_dict({"text": texts}), seed=0)
    for row, text in zip(pairs, texts):
        if text == "Only one.":
            assert row["next_sentence_label"] == NOT_NEXT
    assert sum(pairs["next_sentence_label"]) == 3  # 3 IsNext (label 0) and 3 NotNext


def test_pairs_are_seeded_and_pure():
    ds = Dataset.from_dict({"text": _corpus()})
    a, b, c = (build_nsp_dataset(ds, seed=s).to_list() for s in (5, 5, 6))
    assert a == b and a != c


def test_assign_labels_never_marks_single_sentence_is_next():
    counts = np.array([1, 1, 1, 1, 2, 3])
    labels = assign_labels(counts, seed=1)
    assert (labels[counts < 2] == NOT_NEXT).all() and (labels == IS_NEXT).sum() == 2
