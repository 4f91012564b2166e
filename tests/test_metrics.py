"""HR@K and NDCG@K against rankings computed by hand, including the pessimistic tie rule."""

import math

import numpy as np
import pytest
import torch

from pipeline.ranking.evaluation.metrics import hit_ratio, metrics_from_ranks, ndcg, rank_against


def test_ranks_by_hand_with_ties_counted_against_the_positive():
    pos = torch.tensor([0.9, 0.5, 0.2])
    comp = torch.tensor([[0.1, 0.2, 0.3], [0.6, 0.5, 0.1], [0.3, 0.4, 0.5]])
    # row 0: nothing beats 0.9 -> 0; row 1: 0.6 beats, 0.5 ties (counts above) -> 2; row 2: all three -> 3
    assert rank_against(pos, comp).tolist() == [0, 2, 3]


def test_padding_cells_never_count():
    pos = torch.tensor([0.5, 0.5])
    comp = torch.tensor([[0.9, 0.9, 0.1], [0.5, 0.5, 0.5]])
    valid = torch.tensor([[True, False, False], [False, False, True]])
    assert rank_against(pos, comp, valid).tolist() == [1, 1]


def test_hr_and_ndcg_by_hand():
    ranks = np.array([0, 2, 3])
    assert hit_ratio(ranks, 1) == pytest.approx(1 / 3)
    assert hit_ratio(ranks, 3) == pytest.approx(2 / 3)
    assert hit_ratio(ranks, 5) == pytest.approx(1.0)
    assert ndcg(ranks, 1) == pytest.approx(1 / 3)
    assert ndcg(ranks, 3) == pytest.approx((1 + 1 / math.log2(4)) / 3)  # 0.5
    assert ndcg(ranks, 5) == pytest.approx((1 + 0.5 + 1 / math.log2(5)) / 3)


def test_hr1_equals_ndcg1_and_keys():
    out = metrics_from_ranks(np.array([0, 1, 0, 7]), [1, 3, 5, 10])
    assert out["hr@1"] == out["ndcg@1"] == 0.5
    assert list(out)[:2] == ["hr@10", "ndcg@10"] and out["n"] == 4


def test_constant_model_gets_no_credit():
    pos = torch.zeros(4)
    comp = torch.zeros(4, 99)
    ranks = rank_against(pos, comp).numpy()
    assert (ranks == 99).all()
    out = metrics_from_ranks(ranks, [1, 3, 5, 10])
    assert all(out[f"{m}@{k}"] == 0.0 for m in ("hr", "ndcg") for k in (1, 3, 5, 10))


def test_a_nan_score_counts_against_the_positive_wherever_it_is():
    # a diverged model must not rank its positives first: NaN compares False with everything
    pos = torch.tensor([float("nan"), 0.5, float("nan")])
    comp = torch.tensor([[0.1, 0.2, 0.3], [float("nan"), 0.1, 0.2], [float("nan"), float("nan"), 0.0]])
    valid = torch.tensor([[True, True, False], [True, True, True], [True, True, True]])
    assert rank_against(pos, comp, valid).tolist() == [2, 1, 3]


def test_told_the_scores_are_finite_the_ranks_are_the_same_without_looking_for_nan():
    rng = np.random.default_rng(0)
    comp = torch.tensor(rng.normal(size=(6, 40)))
    comp[:, :5] = comp[:, 5:10]  # ties
    pos = comp[:, 7].clone()
    valid = torch.tensor(rng.random((6, 40)) < 0.8)
    assert torch.equal(rank_against(pos, comp, valid, finite=True), rank_against(pos, comp, valid))
