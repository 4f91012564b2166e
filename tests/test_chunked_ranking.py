"""Full ranking in chunks over users and items gives exactly the ranks of one dense score matrix per user batch."""

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.ranking.models.baselines import EASE, Popularity
from pipeline.ranking.evaluation.evaluate import full_ranking_mask, rank_full


pytestmark = pytest.mark.usefixtures("torch_single_thread")


class SliceOnlyScorer(nn.Module):
    """Scores come from `score_items` only; `score_all` fails, so chunked ranking must never build a full row."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)  # (n_users, n_items)
        self.slices = []

    def score_items(self, users, item_slice):
        self.slices.append((item_slice.start, item_slice.stop))
        return self.table[users][:, item_slice]

    def score_all(self, users):
        raise AssertionError("a model with score_items must not be asked for whole rows")


@pytest.mark.parametrize("batch_items", [7, 64, 599, 600, 10_000])  # 599 leaves a last chunk of one item
def test_chunked_ranks_equal_unchunked_ranks(ranking_env, batch_items):
    data = ranking_env.data
    ease = EASE(data.n_users, data.n_items, 50.0).fit(data.train.users, data.train.items)  # slices of score_all
    pop = Popularity(data.n_users, data.n_items).fit(data.train.users, data.train.items)  # ties; has score_items
    for model in (ease, pop):
        for split in ("valid", "test"):
            mask = full_ranking_mask(data, split)
            whole = rank_full(model, getattr(data, split), mask, batch_users=64, batch_items=data.n_items).ranks
            chunked = rank_full(model, getattr(data, split), mask, batch_users=13, batch_items=batch_items).ranks
            np.testing.assert_array_equal(chunked, whole)
    assert whole.max() > 100  # the positives really compete with items across many chunks


def test_chunks_bound_the_score_matrix_and_keep_pessimistic_ties(ranking_env):
    data = ranking_env.data
    rng = np.random.default_rng(0)
    table = torch.as_tensor(rng.integers(0, 5, size=(data.n_users, data.n_items)), dtype=torch.float32)  # ties
    model = SliceOnlyScorer(table)
    mask = full_ranking_mask(data, "test")
    ranks = rank_full(model, data.test, mask, batch_users=50, batch_items=128).ranks
    assert max(hi - lo for lo, hi in model.slices) <= 128
    # reference: competitors are the unmasked items scoring >= the positive (ties count against it)
    for row in range(0, len(data.test.users), 37):
        u, i = int(data.test.users[row]), int(data.test.items[row])
        masked_items = mask.indices[mask.indptr[u] : mask.indptr[u + 1]]
        free = np.ones(data.n_items, bool)
        free[masked_items] = False
        assert ranks[row] == int(((table[u].numpy() >= table[u, i].item()) & free).sum())
