"""The model family: shapes, the semantic branch against its formula, batched scoring, baselines, sampling."""

import numpy as np
import pytest
import torch

from pipeline.ranking.models import baselines
from pipeline.ranking.models.baselines import EASE, MatrixFactorization, Popularity
from pipeline.ranking.evaluation.ablation import shuffle_profiles
from pipeline.ranking.models.fusion import FusionRanker
from pipeline.ranking.models.fusion.mlp import MLPBranch
from pipeline.ranking.training.sampling import NegativeSampler, PairSet, sample_negatives
from tests.ranking_fixtures import DIM, N_ITEMS, N_USERS, tiny_profiles

pytestmark = pytest.mark.usefixtures("torch_single_thread")




# the branch sets the registry's fusion models switch on (tests/test_registry.py: which model has which)
BRANCH_SETS = {"gmf": ("gmf",), "mlp": ("mlp",), "neumf": ("gmf", "mlp"), "text_and_ids": ("semantic", "gmf", "mlp"),
               "text": ("semantic",)}


def tiny(variant: str) -> FusionRanker:
    torch.manual_seed(0)
    model = FusionRanker(BRANCH_SETS[variant], N_USERS, N_ITEMS, factors=4, mlp_layers=[8, 6, 4],
                         profiles=tiny_profiles(),
                         mlp_pairs_per_block=2 * N_USERS + 1)  # score_all: 2-item chunks, a remainder
    with torch.no_grad():  # move u_s, i_s off their all-ones start so the formula test is not trivial
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("variant", sorted(BRANCH_SETS))
def test_forward_shapes_and_interface(variant):
    model = tiny(variant)
    users, items = torch.tensor([0, 1, 6]), torch.tensor([3, 10, 0])
    assert model(users, items).shape == (3,)
    assert model.score(users, items).shape == (3,)
    assert model.score_all(users).shape == (3, N_ITEMS)
    loss = model.loss(users, items, torch.tensor([[1, 2], [3, 4], [5, 6]]))
    assert loss.ndim == 0 and torch.isfinite(loss)
    vectors = model.branch_vectors(users, items)
    assert list(vectors) == [b for b in ("semantic", "gmf", "mlp") if b in BRANCH_SETS[variant]]
    widths = {"semantic": DIM, "gmf": 4, "mlp": 4}
    assert all(v.shape == (3, widths[name]) for name, v in vectors.items())


@pytest.mark.parametrize("variant", sorted(BRANCH_SETS))
def test_score_all_equals_pairwise_forward(variant):
    model = tiny(variant)
    users = torch.arange(N_USERS)
    pairs_u = users.repeat_interleave(N_ITEMS)
    pairs_i = torch.arange(N_ITEMS).repeat(N_USERS)
    expected = model(pairs_u, pairs_i).reshape(N_USERS, N_ITEMS)
    torch.testing.assert_close(model.score_all(users), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", sorted(BRANCH_SETS))
def test_score_parts_sum_to_the_logit(variant):
    model = tiny(variant)
    users, items = torch.tensor([0, 2, 5]), torch.tensor([1, 1, 9])
    parts = model.score_parts(users, items)
    torch.testing.assert_close(sum(parts.values()), model(users, items))


def test_the_mlp_tower_scores_the_catalogue_in_blocks_of_bounded_size():
    """Full ranking hands score_all hundreds of users at once; the tower must still see small blocks (at 17k items
    blocks of 4,096 items per user batch were 2 GB each and made validation memory-bound)."""
    branch = MLPBranch(N_USERS, 50, [8, 6, 4], pairs_per_block=20)
    seen = []  # the (user, item) pairs of each block the tower's second layer sees
    branch.layers[2].register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    with torch.no_grad():  # as in ranking, where the tower's ReLUs work in place
        expected = torch.stack([branch(torch.full((50,), u), torch.arange(50)) @ torch.ones(4) for u in range(N_USERS)])
        seen.clear()
        scores = branch.score_all(torch.arange(N_USERS), torch.ones(4))
    torch.testing.assert_close(scores, expected)
    assert max(seen) <= 20 and sum(seen) == N_USERS * 50  # small blocks that cover every pair once
    torch.testing.assert_close(branch.score_all(torch.arange(N_USERS), torch.ones(4)), scores)  # autograd's path
    with torch.no_grad():
        assert branch.score_all(torch.arange(0), torch.ones(4)).shape == (0, 50)  # an empty user batch


def test_semantic_branch_equals_eq8_by_hand():
    model = tiny("text")
    prof = tiny_profiles()
    u, i = 3, 7
    semantic = model.branches["semantic"]
    u_s = semantic.user_gate.weight[u].detach().numpy()
    i_s = semantic.item_gate.weight[i].detach().numpy()
    l_s = (u_s * prof.users[u]) * (i_s * prof.items[i])  # eq. 8, profiles for b_s
    w = model.predict.weight[0].detach().numpy()
    b = model.predict.bias.item()
    got = semantic(torch.tensor([u]), torch.tensor([i]))[0].detach().numpy()
    np.testing.assert_allclose(got, l_s, rtol=1e-5)
    np.testing.assert_allclose(model(torch.tensor([u]), torch.tensor([i])).item(), w @ l_s + b, rtol=1e-5)
    prob = 1 / (1 + np.exp(-(w @ l_s + b)))  # eq. 12 prediction
    np.testing.assert_allclose(torch.sigmoid(model(torch.tensor([u]), torch.tensor([i]))).item(), prob, rtol=1e-5)


def test_profiles_are_fixed_buffers_not_parameters_nor_checkpointed():
    model = tiny("text_and_ids")
    profile_names = {n for n, _ in model.named_buffers() if n.rsplit(".", 1)[-1] in ("b_u", "b_i")}
    assert profile_names == {"branches.semantic.b_u", "branches.semantic.b_i"}
    assert not profile_names & {n for n, _ in model.named_parameters()}
    assert not profile_names & set(model.state_dict())
    before = model.branches["semantic"].b_u.clone()
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model.loss(torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([[4], [5]])).backward()
    opt.step()
    assert torch.equal(model.branches["semantic"].b_u, before)


def test_text_variant_without_profiles_is_refused():
    with pytest.raises(ValueError, match="profiles"):
        FusionRanker(("semantic", "gmf", "mlp"), N_USERS, N_ITEMS)


def test_shuffle_permutes_rows_seeded():
    prof = tiny_profiles()
    a, b = shuffle_profiles(prof, 1), shuffle_profiles(prof, 1)
    np.testing.assert_array_equal(a.users, b.users)
    assert not np.array_equal(a.users, prof.users) and not np.array_equal(a.items, prof.items)
    # same rows, other owners
    assert sorted(map(tuple, a.users.tolist())) == sorted(map(tuple, prof.users.tolist()))


def test_popularity_and_mf_interface():
    users, items = np.array([0, 1, 2, 2]), np.array([3, 3, 3, 5])
    pop = Popularity(N_USERS, N_ITEMS).fit(users, items)
    assert pop.score_all(torch.tensor([0, 1])).shape == (2, N_ITEMS)
    assert pop.score(torch.tensor([0]), torch.tensor([3])).item() == 3
    for loss in ("bpr", "bce"):
        mf = MatrixFactorization(N_USERS, N_ITEMS, 4, loss)
        torch.testing.assert_close(mf.score_all(torch.tensor([1]))[0, 5],
                                   mf.score(torch.tensor([1]), torch.tensor([5]))[0])


def softplus(x):
    return np.log1p(np.exp(x))


def hand_set_mf(loss: str) -> MatrixFactorization:
    mf = MatrixFactorization(3, 4, 2, loss)
    with torch.no_grad():
        mf.p.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]))
        mf.q.weight.copy_(torch.tensor([[1.0, 1.0], [2.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
    return mf


# user 0 (p = [1, 0]): positive item 1 scores 2, negatives 0 and 3 score 1 and -1;
# user 1 (p = [0, 2]): positive item 2 scores 2, negatives 3 and 0 score 0 and 2
USERS, POS, NEG = torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([[0, 3], [3, 0]])


def test_bpr_loss_is_the_mean_of_minus_log_sigmoid_of_each_positive_negative_gap():
    gaps = np.array([2 - 1, 2 - (-1), 2 - 0, 2 - 2])
    expected = softplus(-gaps).mean()  # -log sigmoid(d) = softplus(-d)
    assert hand_set_mf("bpr").loss(USERS, POS, NEG).item() == pytest.approx(expected, rel=1e-6)


def test_bce_loss_is_eq12_averaged_over_positives_and_negatives():
    positives, negatives = np.array([2.0, 2.0]), np.array([1.0, -1.0, 0.0, 2.0])
    expected = (softplus(-positives).sum() + softplus(negatives).sum()) / 6  # -log sigmoid(s), -log(1 - sigmoid(s))
    assert hand_set_mf("bce").loss(USERS, POS, NEG).item() == pytest.approx(expected, rel=1e-6)


def test_ease_matches_the_closed_form_in_numpy():
    rng = np.random.default_rng(0)
    x = (rng.random((N_USERS, N_ITEMS)) < 0.4).astype(np.float64)
    users, items = np.nonzero(x)
    lam = 2.0
    p = np.linalg.inv(x.T @ x + lam * np.eye(N_ITEMS))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    model = EASE(N_USERS, N_ITEMS, lam).fit(users, items)
    np.testing.assert_allclose(model.score_all(torch.arange(N_USERS)).numpy(), x @ b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.score(torch.tensor([2, 4]), torch.tensor([1, 8])),
                               model.score_all(torch.tensor([2, 4]))[[0, 1], [1, 8]])


def test_the_gram_from_the_sparse_product_is_the_dense_product_exactly(monkeypatch):
    """X^T X on the CPU is a sparse product made dense (a dense one cost 27 s at the paper's size): the same
    integer counts as the accelerator's dense product, duplicate pairs counted once."""
    rng = np.random.default_rng(1)
    x = rng.random((N_USERS, N_ITEMS)) < 0.4
    users, items = np.nonzero(x)
    model = EASE(N_USERS, N_ITEMS)
    model.hold_pairs(np.r_[users, users[:3]], np.r_[items, items[:3]])  # three pairs given twice
    sparse = model.gram()
    monkeypatch.setattr(baselines, "on_accelerator", lambda matrix: True)
    dense = model.gram()
    assert sparse.dtype == dense.dtype == torch.float64 and sparse.is_contiguous()
    assert torch.equal(sparse, dense) and torch.equal(sparse, torch.tensor(x.T.astype(float) @ x.astype(float)))


def test_negatives_avoid_training_items_and_are_redrawn_each_epoch():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(50), 8)
    items = np.concatenate([rng.choice(20, 8, replace=False) for _ in range(50)])  # 8 of 20 items seen per user
    sampler = NegativeSampler(users, items, 50, 20, seed=0)
    seen = PairSet(users, items, 50, 20)
    u1, _, n1 = sampler.epoch(4)
    u2, _, n2 = sampler.epoch(4)
    assert n1.shape == (400, 4)
    assert not seen.contains(u1[:, None], n1).any() and not seen.contains(u2[:, None], n2).any()
    assert not np.array_equal(n1, n2)


def test_user_with_every_item_is_a_clear_error():
    seen = PairSet(np.zeros(3, int), np.arange(3), 1, 3)
    with pytest.raises(ValueError, match="every item"):
        sample_negatives(np.random.default_rng(0), np.array([0]), 1, seen)


def test_pairset_dense_mask():
    seen = PairSet(np.array([0, 0, 2]), np.array([1, 4, 0]), 3, 5)
    mask = seen.dense_mask(np.array([2, 0, 1])).numpy()
    expected = np.zeros((3, 5), bool)
    expected[0, 0] = expected[1, 1] = expected[1, 4] = True
    np.testing.assert_array_equal(mask, expected)
