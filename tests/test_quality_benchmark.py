"""The quality benchmark's fairness helpers: the shuffle ablation can hold its partner's choices, and the bootstrap
resamples users (each with all of their positives), not positives."""

import dataclasses

import numpy as np
import pytest
import torch

from benchmarks.common import fixed_choices, user_bootstrap
from pipeline.config import RunSpec
from pipeline.ranking.training.train import train
from tests.ranking_fixtures import replace_config

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_a_one_point_grid_from_the_partners_choices_reproduces_its_model_and_shuffling_then_changes_only_profiles(
        ranking_env):
    data, profiles = ranking_env.data, ranking_env.profiles()
    config = replace_config(ranking_env.config, "bert_rs", text_side_weights=[0.0, 1.0], text_weights=[0.0, 0.5, 1.0])
    spec = RunSpec(model="bert_rs", embeddings="x")
    partner = train(spec, config, data, profiles, progress=False).model
    held = config.override("bert_rs", **fixed_choices(partner.choices()))
    again = train(spec, held, data, profiles, progress=False).model
    assert partner.choices()["validation_looks"] > 1 and again.choices()["validation_looks"] == 1
    users = torch.arange(data.n_users)
    torch.testing.assert_close(again.score_all(users), partner.score_all(users))
    shuffled = train(dataclasses.replace(spec, shuffle=True), held, data, profiles, progress=False).model
    settings = lambda model: {k: v for k, v in model.choices().items() if k != "validation_looks"}  # noqa: E731
    assert settings(shuffled) == settings(partner)  # no search left to fall back to plain EASE
    assert not torch.allclose(shuffled.score_all(users), partner.score_all(users))  # only the profiles moved


def test_the_bootstrap_resamples_users_with_all_their_positives():
    # user 0 gains 1 on each of 3 positives, user 1 gains 0 on its single positive: resampling users can only
    # give means 0 (user 1 twice), 3/4 or 1, so the interval's ends are 0 and 1; resampling positives would not
    low, high = user_bootstrap([1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], np.array([0, 0, 0, 1]))
    assert (low, high) == (0.0, 1.0)


def test_a_cache_lent_by_another_protocol_equals_one_encoded_for_this_split(tmp_path, synthetic_dump,
                                                                             tiny_encoder_dir):
    """The benchmark encodes each dataset's reviews once: the other protocol's cache lends the review vectors and
    only the profiles, which follow the split, are computed again. The result must be the cache encoding gives."""
    import dataclasses as dc

    from benchmarks.common import reuse_review_vectors
    from pipeline.config import EmbedConfig
    from pipeline.data.prepare import prepare_dataset
    from pipeline.data.prepared import load_prepared
    from pipeline.embeddings.build import build_cache
    from pipeline.embeddings.cache import load_profiles
    from tests.data_fixtures import small_prepare_config

    embed = EmbedConfig(pooling="mean", max_length=32, batch_size=8, shard_size=16, backend="torch")
    data = {}
    for protocol in ("leave_one_out", "random"):
        prepare_dataset(dc.replace(small_prepare_config(), protocol=protocol), [str(synthetic_dump)],
                        tmp_path / protocol)
        data[protocol] = load_prepared(tmp_path / protocol)
    build_cache(data["leave_one_out"].root, str(tiny_encoder_dir), "m", embed, tmp_path / "loo_cache", progress=False)
    build_cache(data["random"].root, str(tiny_encoder_dir), "m", embed, tmp_path / "encoded", progress=False)
    reuse_review_vectors(tmp_path / "loo_cache", data["random"], embed, tmp_path / "lent")
    encoded, lent = (load_profiles(tmp_path / name, data_fingerprint=data["random"].fingerprint)
                     for name in ("encoded", "lent"))
    np.testing.assert_allclose(lent.users, encoded.users, atol=1e-5)
    np.testing.assert_allclose(lent.items, encoded.items, atol=1e-5)
    assert not np.allclose(lent.users, load_profiles(tmp_path / "loo_cache").users, atol=1e-5)  # the split moved


@pytest.mark.parametrize("model", ["ease", "gmf"])
def test_a_row_is_chosen_by_the_validation_score_measured_before_its_final_fit(ranking_env, model):
    """After the final fit the model has learned the validation pairs; choosing a configuration by a validation score
    measured then would choose by memorisation."""
    from benchmarks.quality import fit_and_score
    from pipeline.ranking.evaluation.evaluate import evaluate

    data = ranking_env.data
    config = replace_config(ranking_env.config, epochs=3, lambdas=[50.0])
    chosen = train(RunSpec(model=model), config, data, progress=False)
    row = fit_and_score(RunSpec(model=model), replace_config(config, refit_with_validation=True), data, None)
    assert row["valid_full_ndcg@10"] == chosen.best_valid["ndcg@10"]
    final = train(RunSpec(model=model), replace_config(config, refit_with_validation=True), data, progress=False)
    assert (evaluate(final.model, data, "valid", ks=[10], protocols=["full"])["full"]["ndcg@10"]
            > row["valid_full_ndcg@10"])
    assert row["test"]["full"]["ndcg@10"] == evaluate(final.model, data, "test", ks=[10])["full"]["ndcg@10"]


def test_the_verdict_reports_the_defaults_gain_beside_the_best_text_rows():
    """Validation may prefer another text row (here the validation best); the default's own gain and interval over
    the best non-text row are reported beside it, so that a rule change that costs the default shows."""
    from benchmarks.quality import verdict

    def row(valid, per_positive, cache="minilm_mean"):
        return {"cache": cache, "shuffle": False, "uses_text": cache is not None, "valid": valid,
                "full": {"ndcg@10": (float(np.mean(per_positive)), 0.0)}, "per_positive": per_positive,
                "buckets": {}}

    rows = {"ease_wide": row(0.2, [0.5, 0.5, 0.5, 0.5], cache=None), "neumf": row(0.1, [0.1] * 4, cache=None),
            "bert_rs@minilm_mean": row(0.25, [1.0, 0.5, 0.5, 0.5]),
            "bert_rs_validation_best@minilm_mean": row(0.3, [1.0, 1.0, 0.5, 0.5])}
    v = verdict(rows, np.array([0, 1, 2, 3]), default="bert_rs@minilm_mean")
    assert v["best_text"] == "bert_rs_validation_best@minilm_mean" and v["best_non_text"] == "ease_wide"
    assert v["default"]["row"] == "bert_rs@minilm_mean"
    assert v["default"]["relative_gain_over_best_non_text"] == pytest.approx(0.625 / 0.5 - 1)
    # one user of four gains 0.5: a resample drawing them k times of 4 has mean k/8; k = 4 is rarer than 2.5%
    assert v["default"]["bootstrap_95ci_gain"] == [0.0, 0.375]
