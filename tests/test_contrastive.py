"""Contrastive encoder adaptation: pairs from training reviews only, a BertModel-loadable output, stage CLI.
Resume after a kill is specified in tests/test_finetune_resume.py."""

from __future__ import annotations

import dataclasses
import json

import torch
import typer
from typer.testing import CliRunner

from pipeline.config import FinetuneConfig
from pipeline.data.prepared import load_reviews
from pipeline.text import contrastive as ct
from pipeline.text.finetune import SOURCE_FILE, default_work_dir
from tests.text_fixtures import MARKER, TOY_REVIEWS

CONFIG = FinetuneConfig(max_steps=4, contrastive_batch_size=2, max_length=32, eval_share=0.2, save_steps=2,
                        warmup_ratio=0.0)
WHO_WROTE = {text: (user, item, split) for user, item, split, text in TOY_REVIEWS}


def test_pairs_join_a_users_review_to_another_users_review_of_an_item_the_user_chose(toy_prepared):
    pairs = ct.user_item_pairs(load_reviews(toy_prepared), seed=0)
    training = {(u, i) for u, i, split, _ in TOY_REVIEWS if split == "train"}
    assert pairs.num_rows > 0
    for anchor, positive in zip(pairs["anchor"], pairs["positive"]):
        assert MARKER not in anchor + positive  # held-out reviews never reach a pair
        (u, j, anchor_split), (v, i, positive_split) = WHO_WROTE[anchor], WHO_WROTE[positive]
        assert anchor_split == positive_split == "train"
        assert v != u and i != j and (u, i) in training  # another user's words about an item u also chose


def test_pairs_are_deterministic_and_can_be_limited_to_some_users(toy_prepared):
    reviews = load_reviews(toy_prepared)
    assert ct.user_item_pairs(reviews, seed=3).to_dict() == ct.user_item_pairs(reviews, seed=3).to_dict()
    only = ct.user_item_pairs(reviews, seed=3, users=[4])
    assert only.num_rows > 0 and all(WHO_WROTE[a][0] == 4 for a in only["anchor"])


def test_gradient_accumulation_applies_to_the_contrastive_objective_too(tmp_path):
    config = dataclasses.replace(CONFIG, grad_accum_steps=3)
    args = ct.training_arguments(config, tmp_path, n_pairs=64)
    assert args.gradient_accumulation_steps == 3
    assert args.per_device_train_batch_size == config.contrastive_batch_size  # one process


def test_retrieval_accuracy_is_the_share_of_anchors_whose_own_positive_is_nearest():
    """Four held-out pairs; the encoder places anchor 3 nearer positive 1 than its own: accuracy 3 / 4."""
    from datasets import Dataset

    place = {"a0": [1, 0, 0, 0], "a1": [0, 1, 0, 0], "a2": [0, 0, 1, 0], "a3": [0, 0, 0, 1],
             "p0": [1, 0, 0, 0], "p1": [0, 1, 0, 0.5], "p2": [0, 0, 1, 0], "p3": [0.9, 0, 0, 0.1]}

    class PlacedEncoder:
        def encode(self, texts, batch_size, convert_to_tensor, normalize_embeddings):
            vectors = torch.tensor([place[t] for t in texts], dtype=torch.float32)
            return torch.nn.functional.normalize(vectors, dim=-1) if normalize_embeddings else vectors

    pairs = Dataset.from_dict({"anchor": ["a0", "a1", "a2", "a3"], "positive": ["p0", "p1", "p2", "p3"]})
    assert ct.retrieval_accuracy(PlacedEncoder(), pairs, batch_size=2) == {"accuracy@1": 0.75, "pairs": 4,
                                                                          "chance": 0.25}


def test_contrastive_finetune_saves_a_bertmodel_and_reports_retrieval(toy_prepared, tiny_encoder_dir, tmp_path):
    from transformers import BertModel

    out = tmp_path / "enc"
    metrics = ct.contrastive_finetune(load_reviews(toy_prepared), str(tiny_encoder_dir), out, CONFIG)
    assert metrics["objective"] == "contrastive" and metrics["steps"] == 4 and metrics["train_pairs"] >= 2
    for when in ("before", "after"):
        assert {"accuracy@1", "pairs"} <= set(metrics[when])
    assert json.loads((out / SOURCE_FILE).read_text())["objective"] == "contrastive"
    assert not default_work_dir(out).exists()
    bert, info = BertModel.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"]
    base = BertModel.from_pretrained(str(tiny_encoder_dir))
    assert not torch.equal(bert.encoder.layer[0].attention.self.query.weight,
                           base.encoder.layer[0].attention.self.query.weight)


def test_finetune_stage_runs_the_contrastive_objective(toy_prepared, tiny_encoder_dir, tmp_path):
    from stages import finetune

    app = typer.Typer()
    app.command("finetune")(finetune.main)
    app.command("noop")(lambda: None)
    params = tmp_path / "params.yaml"
    params.write_text(
        f"encoders:\n  tiny:\n    model: {tiny_encoder_dir}\n    finetune: true\n    objective: contrastive\n"
        "finetune:\n  max_steps: 2\n  contrastive_batch_size: 2\n  max_length: 32\n  eval_share: 0.2\n"
    )
    metrics = tmp_path / "m.json"
    res = CliRunner().invoke(app, ["finetune", "--prepared", str(toy_prepared), "--encoder", "tiny", "--out",
                                   str(tmp_path / "enc"), "--metrics", str(metrics), "--params", str(params)])
    assert res.exit_code == 0, res.output
    assert json.loads(metrics.read_text())["objective"] == "contrastive"
