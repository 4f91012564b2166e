"""MLM+NSP fine-tuning: collation, loss decreasing, train-only text, a head-free BertModel output, stage CLI.
Resume after a kill and several processes are specified in tests/test_finetune_resume.py."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import typer
from typer.testing import CliRunner

from pipeline.config import FinetuneConfig
from pipeline.data.prepared import load_reviews
from pipeline.text import finetune as ft
from tests.text_fixtures import MARKER, TOY_REVIEWS

CONFIG = FinetuneConfig(max_steps=4, batch_size=4, max_length=32, eval_share=0.2, save_steps=2, warmup_ratio=0.0)


def _tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def test_nsp_datasets_use_training_reviews_only(toy_prepared, tiny_encoder_dir):
    reviews = load_reviews(toy_prepared)
    texts = ft.training_texts(reviews)
    assert all(MARKER not in t for t in texts["text"])
    pairs = ft.build_nsp_dataset(texts, seed=1)
    assert all(MARKER not in a + b for a, b in zip(pairs["text_a"], pairs["text_b"]))
    train, heldout = ft.nsp_datasets(reviews, _tokenizer(tiny_encoder_dir), CONFIG)
    tok = _tokenizer(tiny_encoder_dir)
    decoded = tok.batch_decode(list(train["input_ids"]) + list(heldout["input_ids"]))
    assert decoded and all(MARKER not in d.replace(" ", "") for d in decoded)
    assert train.num_rows + heldout.num_rows == sum(1 for r in TOY_REVIEWS if r[2] == "train")


def test_collator_keeps_next_sentence_label(toy_prepared, tiny_encoder_dir):
    tok = _tokenizer(tiny_encoder_dir)
    train, _ = ft.nsp_datasets(load_reviews(toy_prepared), tok, CONFIG)
    rows = train.to_list()[:4]
    batch = ft.make_collator(tok, CONFIG, seed=0)(rows)
    assert batch["next_sentence_label"].tolist() == [r["next_sentence_label"] for r in rows]
    assert batch["labels"].shape == batch["input_ids"].shape
    # [CLS] and [SEP] are never masked
    special = torch.isin(batch["labels"], torch.tensor([tok.cls_token_id, tok.sep_token_id]))
    assert not special.any()


def test_masks_are_a_function_of_the_batch_not_of_earlier_batches(toy_prepared, tiny_encoder_dir):
    """A resumed run starts a fresh process: its first batch must get the masks an uninterrupted run gave it."""
    tok = _tokenizer(tiny_encoder_dir)
    rows = ft.nsp_datasets(load_reviews(toy_prepared), tok, CONFIG)[0].to_list()
    torch.manual_seed(0)
    running = ft.make_collator(tok, CONFIG)
    first = running(rows[:4])
    running(rows[4:8])
    torch.manual_seed(1)  # another global RNG state, as in a fresh process
    again, fresh = running(rows[:4]), ft.make_collator(tok, CONFIG)(rows[:4])
    assert torch.equal(first["labels"], again["labels"]) and torch.equal(first["labels"], fresh["labels"])
    assert torch.equal(first["input_ids"], fresh["input_ids"])
    other_seed = ft.make_collator(tok, CONFIG, seed=CONFIG.seed + 1)(rows[:4])
    assert not torch.equal(first["labels"], other_seed["labels"])


def test_training_steps_lower_loss_on_toy_corpus(tiny_encoder_dir):

    model, tok, fresh = ft.load_pretraining_model(str(tiny_encoder_dir), seed=0)
    assert any(k.startswith("cls.seq_relationship") for k in fresh)  # NSP head initialised fresh
    texts = ["The album is great. I love the voice.", "Bad song. It was a bad time."] * 4
    from datasets import Dataset

    pairs = ft.tokenize_pairs(ft.build_nsp_dataset(Dataset.from_dict({"text": texts}), seed=0), tok, 32)
    pairs = pairs.add_column("pair_id", list(range(pairs.num_rows)))
    batch = ft.make_collator(tok, CONFIG, seed=0)(pairs.select_columns(ft.NSP_COLUMNS).to_list())
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(8):
        loss = model(**batch).loss
        losses.append(float(loss))
        optim.zero_grad()
        loss.backward()
        optim.step()
    assert losses[-1] < losses[0]


def test_finetune_saves_bertmodel_checkpoint_and_metrics(toy_prepared, tiny_encoder_dir, tmp_path):
    from transformers import BertForPreTraining, BertModel

    out = tmp_path / "enc"
    metrics = ft.finetune_encoder(load_reviews(toy_prepared), str(tiny_encoder_dir), out, CONFIG)
    assert metrics["finetuned"] and metrics["steps"] == 4
    for when in ("before", "after"):
        assert {"mlm_loss", "perplexity", "nsp_accuracy"} <= set(metrics[when])
    assert (out / "model.safetensors").is_file() and (out / ft.SOURCE_FILE).is_file()
    assert not ft.default_work_dir(out).exists()  # work folder cleaned up after success
    bert, info = BertModel.from_pretrained(str(out), output_loading_info=True)
    assert not info["missing_keys"]  # pooler included
    trained = BertForPreTraining.from_pretrained(str(out))
    assert torch.equal(bert.pooler.dense.weight, trained.bert.pooler.dense.weight)
    base = BertModel.from_pretrained(str(tiny_encoder_dir))
    assert not torch.equal(bert.encoder.layer[0].attention.self.query.weight,
                           base.encoder.layer[0].attention.self.query.weight)


def test_the_fine_tune_metrics_hold_no_clock_reading(toy_prepared, tiny_encoder_dir, tmp_path, monkeypatch):
    """metrics/finetune/<name>.json is a DVC output: a wall-clock figure in it would make a rerun of the same inputs
    a changed output (and leave a fresh clone's `git status` dirty after `make repro`). Two runs whose clocks tick at
    different speeds must return the same metrics."""
    import itertools
    import time as time_module

    runs = []
    for speed in (1.0, 1000.0):
        ticks = itertools.count()
        monkeypatch.setattr(time_module, "time", lambda: next(ticks) * speed)
        runs.append(ft.finetune_encoder(load_reviews(toy_prepared), str(tiny_encoder_dir), tmp_path / f"x{speed:g}",
                                        CONFIG))
    assert runs[0] == runs[1]


def test_finetuned_encoder_loads_without_an_unexpected_keys_report(toy_prepared, tiny_encoder_dir, tmp_path):
    import logging

    from transformers import BertForPreTraining, BertModel

    from pipeline.text.encoder_dir import load_bert

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    transformers_log = logging.getLogger("transformers")
    transformers_log.addHandler(handler)

    def reports_on_loading(folder) -> list[str]:
        records.clear()
        BertModel.from_pretrained(str(folder))
        return [r.getMessage() for r in records if "LOAD REPORT" in r.getMessage()]

    try:
        out = tmp_path / "enc"
        ft.finetune_encoder(load_reviews(toy_prepared), str(tiny_encoder_dir), out,
                            FinetuneConfig(max_steps=1, batch_size=4, max_length=32, eval_share=0.2))
        assert reports_on_loading(out) == []
        _, _, missing = load_bert(out)
        assert missing == []
        with_heads = tmp_path / "with_heads"  # what the folder held before: the report this test guards against
        BertForPreTraining.from_pretrained(str(out)).save_pretrained(with_heads)
        assert any("cls.predictions" in report for report in reports_on_loading(with_heads))
    finally:
        transformers_log.removeHandler(handler)


def test_saved_tokenizer_config_holds_no_load_time_options(toy_prepared, tiny_encoder_dir, tmp_path):
    from transformers import AutoTokenizer

    from pipeline.text.encoder_dir import LOAD_TIME_TOKENIZER_KEYS, TOKENIZER_CONFIG_FILE

    out = tmp_path / "enc"
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_encoder_dir), local_files_only=True)
    ft.save_encoder(_bert(tiny_encoder_dir), tokenizer, out,
                    {"base": "tiny"})
    saved = json.loads((out / TOKENIZER_CONFIG_FILE).read_text())
    assert not set(saved) & set(LOAD_TIME_TOKENIZER_KEYS)
    assert AutoTokenizer.from_pretrained(str(out))("the album").input_ids == tokenizer("the album").input_ids


def _bert(folder):
    from transformers import BertModel

    return BertModel.from_pretrained(str(folder))


def _app():
    from stages import finetune

    app = typer.Typer()
    app.command("finetune")(finetune.main)
    app.command("noop")(lambda: None)
    return app


def _params(path: Path, encoder_dir: Path, finetune: bool = True, enabled: bool = True) -> Path:
    path.write_text(
        f"encoders:\n  tiny:\n    model: {encoder_dir}\n    finetune: {str(finetune).lower()}\n"
        f"finetune:\n  enabled: {str(enabled).lower()}\n  max_steps: 2\n  batch_size: 4\n  max_length: 32\n"
        "  eval_share: 0.2\n  save_steps: 50\n"
    )
    return path


def test_finetune_stage_cli_trains_on_train_reviews_only(toy_prepared, tiny_encoder_dir, tmp_path, monkeypatch):
    seen = []
    original = ft.build_nsp_dataset

    def spy(texts, **kwargs):
        seen.extend(texts["text"])
        return original(texts, **kwargs)

    monkeypatch.setattr(ft, "build_nsp_dataset", spy)
    params = _params(tmp_path / "params.yaml", tiny_encoder_dir)
    args = ["finetune", "--prepared", str(toy_prepared), "--encoder", "tiny", "--out", str(tmp_path / "enc"),
            "--metrics", str(tmp_path / "m.json"), "--params", str(params)]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert seen and all(MARKER not in t for t in seen)
    assert set(seen) <= {r[3] for r in TOY_REVIEWS if r[2] == "train"}
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["finetuned"] and metrics["encoder"] == "tiny" and "after" in metrics


def test_finetune_stage_passes_through_when_disabled(toy_prepared, tiny_encoder_dir, tmp_path):
    from transformers import BertModel

    params = _params(tmp_path / "params.yaml", tiny_encoder_dir, enabled=False)
    args = ["finetune", "--prepared", str(toy_prepared), "--encoder", "tiny", "--out", str(tmp_path / "enc"),
            "--metrics", str(tmp_path / "m.json"), "--params", str(params)]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert not metrics["finetuned"] and "skipped" in metrics["note"]
    a, b = BertModel.from_pretrained(str(tmp_path / "enc")), BertModel.from_pretrained(str(tiny_encoder_dir))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_finetune_stage_unknown_encoder_is_a_clear_error(toy_prepared, tiny_encoder_dir, tmp_path):
    params = _params(tmp_path / "params.yaml", tiny_encoder_dir)
    args = ["finetune", "--prepared", str(toy_prepared), "--encoder", "nope", "--out", str(tmp_path / "enc"),
            "--metrics", str(tmp_path / "m.json"), "--params", str(params)]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 2 and "encoders.nope" in result.output


def test_finetune_stage_names_the_setting_of_a_model_it_cannot_find(toy_prepared, tmp_path):
    params = _params(tmp_path / "params.yaml", tmp_path / "no-such-encoder")
    args = ["finetune", "--prepared", str(toy_prepared), "--encoder", "tiny", "--out", str(tmp_path / "enc"),
            "--metrics", str(tmp_path / "m.json"), "--params", str(params)]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 2, result.output
    assert f"{params}: encoders.tiny.model: {tmp_path / 'no-such-encoder'}" in result.output
    assert not (tmp_path / "enc").exists()
