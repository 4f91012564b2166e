"""The encoder run by OpenVINO with int8 weights and activations: backend "openvino_int8" (`pip install '.[openvino]'`).

How it is made: the torch `BertModel` is converted to OpenVINO (`openvino.convert_model`, traced on two calibration
texts, input lengths left dynamic), then NNCF's post-training quantisation (`nncf.quantize`, transformer preset) runs
the calibration texts through it to set the int8 scales: per output channel for the weights, per tensor for the
activations of every matmul; the preset keeps softmax, layer norms and GELU in floating point and smooths activation
outliers into the weights first. The compiled model runs on the CPU with as many threads as torch has.

The calibration texts are training reviews only (pipeline/embeddings/build.py takes them after the backend check
sample), and the same texts give the same int8 scales, so every process that loads the recipe runs the same int8
model; processes with other thread counts (Ray actors) agree with it to a cosine of 0.9999, not bit for bit.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from types import SimpleNamespace
from typing import Sequence

import numpy as np
import torch

from pipeline.io import DataError

CALIBRATION_SAMPLE = 256  # training reviews that set the scales (the embed stage takes those after its check sample)
CALIBRATION_BATCH = 8  # texts per calibration batch (NNCF collects activation ranges batch by batch)
INSTALL_HINT = "pip install 'bert-rs[openvino]' (or pip install openvino nncf)"


def available() -> bool:
    """Whether OpenVINO and NNCF are installed (backend auto considers openvino_int8 only then)."""
    return all(importlib.util.find_spec(name) is not None for name in ("openvino", "nncf"))


class OpenVinoInt8:
    """A callable with the torch model's signature, `(input_ids, attention_mask) -> output`, whose output has the
    `last_hidden_state` and `pooler_output` that pooling reads, computed by the int8 OpenVINO model.

    Parameters
    ----------
    model : The fp32 `BertModel` (on the CPU, eval mode); left unchanged.
    tokenizer : Its tokenizer.
    calibration : Texts that set the activation scales (at least one).
    max_length : Token limit, as the encoder truncates.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, calibration: Sequence[str], max_length: int):
        if not available():
            raise DataError(f"backend openvino_int8 needs OpenVINO and NNCF: {INSTALL_HINT}")
        if not calibration:
            raise DataError("backend openvino_int8 needs calibration texts to set its int8 scales "
                            "(embed.backend_check_sample training reviews are taken after the check sample)")
        import nncf
        import openvino

        nncf.set_log_level(logging.WARNING)

        def tokens(texts: Sequence[str]) -> dict[str, torch.Tensor]:
            batch = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python branches it follows once
            converted = openvino.convert_model(model, example_input=tokens(calibration[:2]))
        batches = [{name: tensor.numpy() for name, tensor in tokens(calibration[i: i + CALIBRATION_BATCH]).items()}
                   for i in range(0, len(calibration), CALIBRATION_BATCH)]
        quantised = nncf.quantize(converted, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER,
                                  subset_size=len(batches))
        compiled = openvino.Core().compile_model(
            quantised, "CPU", {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY"})
        self._request = compiled.create_infer_request()

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        result = self._request.infer({"input_ids": input_ids.cpu().numpy(),
                                      "attention_mask": attention_mask.cpu().numpy()})
        hidden = torch.from_numpy(np.array(result[0], dtype=np.float32))
        pooled = torch.from_numpy(np.array(result[1], dtype=np.float32)) if len(result) > 1 else None
        return SimpleNamespace(last_hidden_state=hidden, pooler_output=pooled)
