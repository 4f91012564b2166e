"""Encoding: pooler = tanh(W h_cls + b) by hand, mean/cls pooling, order kept under length sorting, bf16 and int8
agreement."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from pipeline.config import PACKAGED_ENCODER
from pipeline.io import DataError
from pipeline.text import openvino_int8
from pipeline.text.encode import cosine_agreement, encode_texts, length_sorted_batches, load_encoder
from pipeline.text.encoders import resolve_encoder, weights_fingerprint

TEXTS = ["the album is great", "bad", "love the voice and the beat of the band, best track", "good music", "it"]


def _hidden(encoder, text):
    batch = encoder.tokenizer([text], return_tensors="pt")
    with torch.inference_mode():
        return encoder.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state[0]


def test_pooler_output_is_tanh_of_linear_cls(tiny_encoder_dir):
    encoder = load_encoder(tiny_encoder_dir, pooling="pooler", batch_size=2)
    vectors = encode_texts(encoder, TEXTS)
    W, b = encoder.model.pooler.dense.weight.detach(), encoder.model.pooler.dense.bias.detach()
    for text, vector in zip(TEXTS, vectors):
        h_cls = _hidden(encoder, text)[0]  # (d,)
        expected = torch.tanh(W @ h_cls + b).numpy()  # paper eq. 7
        np.testing.assert_allclose(vector, expected, atol=1e-5)


def test_mean_and_cls_pooling_match_unpadded_hidden_states(tiny_encoder_dir):
    mean = encode_texts(load_encoder(tiny_encoder_dir, pooling="mean", batch_size=3), TEXTS)
    cls = encode_texts(load_encoder(tiny_encoder_dir, pooling="cls", batch_size=3), TEXTS)
    encoder = load_encoder(tiny_encoder_dir, pooling="mean")
    for i, text in enumerate(TEXTS):
        hidden = _hidden(encoder, text).numpy()  # (seq, d), no padding: padded batches must agree
        np.testing.assert_allclose(mean[i], hidden.mean(0), atol=1e-5)
        np.testing.assert_allclose(cls[i], hidden[0], atol=1e-5)


def test_length_sorted_batches_cover_every_position_once():
    lengths = [5, 1, 9, 3, 3, 7, 2]
    batches = list(length_sorted_batches(lengths, 3))
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    assert [lengths[p] for p in batches[0]] == [9, 7, 5]


def test_bf16_backend_agrees_with_fp32(tiny_encoder_dir):
    fp32 = encode_texts(load_encoder(tiny_encoder_dir, pooling="mean"), TEXTS)
    bf16 = encode_texts(load_encoder(tiny_encoder_dir, pooling="mean", backend="torch_bf16"), TEXTS)
    assert bf16.dtype == np.float32
    assert cosine_agreement(fp32, bf16)["mean"] > 0.98


def test_int8_backend_quantises_only_its_layers_agrees_with_fp32_and_leaves_the_model_fp32(tiny_encoder_dir):
    fp32 = load_encoder(tiny_encoder_dir, pooling="mean")
    int8 = load_encoder(tiny_encoder_dir, pooling="mean", backend="torch_int8")
    exact, quantised = encode_texts(fp32, TEXTS), encode_texts(int8, TEXTS)
    assert quantised.dtype == np.float32 and not np.array_equal(exact, quantised)
    assert cosine_agreement(exact, quantised)["mean"] > 0.98
    quantised_layers = {name for name, module in int8.runner().named_modules()
                        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear)}
    layers = len(int8.model.encoder.layer)
    assert quantised_layers == {f"encoder.layer.{k}.attention.{kind}" for k in range(layers)
                                for kind in ("self.query", "self.key", "self.value", "output.dense")}
    # the loaded model stays fp32: the backend check's reference encodes with it
    np.testing.assert_array_equal(encode_texts(dataclasses.replace(int8, backend="torch"), TEXTS), exact)


def test_pooler_refused_when_checkpoint_lacks_pooler(tiny_encoder_dir, tmp_path):
    from transformers import BertModel

    model = BertModel.from_pretrained(str(tiny_encoder_dir), add_pooling_layer=False)
    model.save_pretrained(tmp_path / "nopool")
    (tmp_path / "nopool" / "tokenizer.json").write_bytes((tiny_encoder_dir / "tokenizer.json").read_bytes())
    with pytest.raises(DataError, match="pooler"):
        load_encoder(tmp_path / "nopool", pooling="pooler")


def test_resolve_encoder_specs(tiny_encoder_dir, tmp_path):
    assert resolve_encoder(str(tiny_encoder_dir)) == str(tiny_encoder_dir)
    assert resolve_encoder("bert-base-uncased") == "bert-base-uncased"  # hub ids pass through untouched
    with pytest.raises(DataError, match="config.json"):
        resolve_encoder(str(tmp_path))
    with pytest.raises(DataError, match="not found"):
        resolve_encoder(str(tmp_path / "missing"))
    with pytest.raises(DataError, match="packaged"):
        resolve_encoder("packaged:nope")
    fp = weights_fingerprint(tiny_encoder_dir)
    (tiny_encoder_dir / "tokenizer_config.json").write_text("{}")  # tokenizer files do not change the weights
    assert weights_fingerprint(tiny_encoder_dir) == fp


def test_packaged_encoder_resolves_offline():
    path = resolve_encoder(PACKAGED_ENCODER)
    assert (__import__("pathlib").Path(path) / "model.safetensors").is_file()
    assert __import__("os").environ["HF_HUB_OFFLINE"] == "1"


def test_weights_fingerprint_is_blind_to_the_saving_library_version(tiny_encoder_dir):
    config_path = tiny_encoder_dir / "config.json"
    config = json.loads(config_path.read_text())
    fp = weights_fingerprint(tiny_encoder_dir)
    config_path.write_text(json.dumps({**config, "transformers_version": "99.0.0"}, indent=4))
    assert weights_fingerprint(tiny_encoder_dir) == fp  # another release, another layout: same encoder
    config_path.write_text(json.dumps({**config, "num_attention_heads": 1}))
    assert weights_fingerprint(tiny_encoder_dir) != fp  # the architecture is part of it


def test_saved_encoder_config_names_no_library_version(tiny_encoder_dir, tmp_path):
    from transformers import AutoTokenizer, BertModel

    from pipeline.text.finetune import save_encoder

    out = tmp_path / "saved"
    save_encoder(BertModel.from_pretrained(str(tiny_encoder_dir)), AutoTokenizer.from_pretrained(str(tiny_encoder_dir)),
                 out, {"base": "tiny"})
    assert "transformers_version" not in json.loads((out / "config.json").read_text())
    assert weights_fingerprint(out) == weights_fingerprint(tiny_encoder_dir)


def test_openvino_int8_backend_agrees_with_fp32_gives_the_same_bytes_again_and_leaves_the_model_fp32(
        tiny_encoder_dir):
    calibration = [f"{text}, and track {i} again" for i, text in enumerate(TEXTS * 4)]
    fp32 = load_encoder(tiny_encoder_dir, pooling="pooler")
    exact = encode_texts(fp32, TEXTS)
    int8 = load_encoder(tiny_encoder_dir, pooling="pooler", backend="openvino_int8", calibration=calibration)
    quantised = encode_texts(int8, TEXTS)
    agreement = cosine_agreement(quantised, exact)
    assert 0.95 < agreement["mean"] < 1.0 - 1e-7  # int8 arithmetic: close to fp32, not equal
    again = load_encoder(tiny_encoder_dir, pooling="pooler", backend="openvino_int8", calibration=calibration)
    np.testing.assert_array_equal(encode_texts(again, TEXTS), quantised)  # same calibration, same int8 model
    np.testing.assert_array_equal(encode_texts(dataclasses.replace(int8, backend="torch"), TEXTS), exact)


def test_openvino_int8_backend_names_what_it_lacks(tiny_encoder_dir, monkeypatch):
    with pytest.raises(DataError, match="openvino_int8 needs calibration texts"):
        encode_texts(load_encoder(tiny_encoder_dir, backend="openvino_int8"), TEXTS)
    monkeypatch.setattr(openvino_int8, "available", lambda: False)
    with pytest.raises(DataError, match=r"needs OpenVINO and NNCF: pip install 'bert-rs\[openvino\]'"):
        encode_texts(load_encoder(tiny_encoder_dir, backend="openvino_int8", calibration=TEXTS), TEXTS)
