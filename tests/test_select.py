"""Choosing settings on validation (pipeline/ranking/select.py): what each model with a grid picks on the planted
world is pinned, so that a selection that keeps the wrong candidate, drops one or scores another metric fails here.

The pinned values were recorded by training through `train()` before selection moved out of the models; in every
grid the winner is neither the first nor (except EASE's) the last candidate, so keeping the first, the last or an
arbitrary one is caught. A change of one rank among 400 validation users moves NDCG@10 by more than 1e-4.
"""

import pytest

from pipeline.config import RunSpec
from pipeline.ranking.train import train

pytestmark = pytest.mark.usefixtures("torch_single_thread")

BERT_RS = RunSpec(model="bert_rs", embeddings="synthetic")


def test_bert_rs_keeps_its_pinned_joint_choice(ranking_env):
    config = ranking_env.config.override("bert_rs", lambdas=[10.0, 100.0, 1000.0], text_side_weights=[0.0, 2.0])
    result = train(BERT_RS, config, ranking_env.data, ranking_env.profiles(), progress=False)
    assert result.model.choices() == {
        "ease_lambda": 1000.0, "side_weight": 2.0, "regulariser": "ease", "whitening": False,
        "text_match": "item_neighbours", "text_weight": 0.5, "pop_weight": 1.0, "pop_only": False,
        # 2 whitenings x 2 side weights x 3 lambdas x 2 regularisers, each with w = 0 once and 3 weights x 2
        # matches, each at 3 popularity weights; plus popularity alone
        "validation_looks": 2 * 2 * 3 * 2 * (1 + 3 * 2) * 3 + 1,
    }
    assert result.best_valid["ndcg@10"] == pytest.approx(0.14187886027859284, abs=1e-6)


def test_ease_keeps_its_pinned_lambda(ranking_env):
    config = ranking_env.config.override("ease", lambdas=[1.0, 30.0, 300.0, 3000.0])
    result = train(RunSpec(model="ease"), config, ranking_env.data, progress=False)
    assert result.model.choices() == {"ease_lambda": 3000.0, "validation_looks": 4}
    assert result.best_valid["ndcg@10"] == pytest.approx(0.10719859456481984, abs=1e-6)


def test_ease_with_one_lambda_chooses_nothing(ranking_env):
    config = ranking_env.config.override("ease", lambdas=[300.0])
    result = train(RunSpec(model="ease"), config, ranking_env.data, progress=False)
    assert result.model.choices() is None
    assert result.best_valid["ndcg@10"] == pytest.approx(0.10716250736201548, abs=1e-6)


def test_the_scalable_solver_keeps_its_pinned_text_weight(ranking_env):
    config = ranking_env.config.override("bert_rs", solver="scalable", scalable_rank=16, scalable_epochs=3,
                                         text_weights=[0.0, 0.25, 0.5, 1.0, 2.0])
    result = train(BERT_RS, config, ranking_env.data, ranking_env.profiles(), progress=False)
    assert result.model.choices()["text_weight"] == 0.5
    assert result.best_valid["ndcg@10"] == pytest.approx(0.10245040285325736, abs=1e-6)
