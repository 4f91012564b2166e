"""The contract of an encoder folder, `data/encoders/<name>/`: what `bertrs finetune` writes and `embed` reads.

    config.json + model.safetensors   a plain `BertModel` (embeddings, encoder, pooler): no pre-training heads,
                                      so loading it reports no unexpected `cls.*` keys
    tokenizer files                   as `save_pretrained` writes them, minus load-time options (see below)
    source.json                       provenance: base spec, base weights fingerprint, finetuned or not, settings

Every file is a pure function of the weights and settings: no absolute path, no load-time flag such as
`local_files_only`, so a folder hashes the same in every clone and after a resumed run (dvc.lock stays put).
Writers live with the code that trains (`pipeline/text/finetune.py`); readers import this module.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pipeline.io import DataError, read_json

log = logging.getLogger(__name__)

# provenance of an encoder folder: base spec, its weights fingerprint, finetuned or not. No absolute path.
SOURCE_FILE = "source.json"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# options that describe how a tokenizer was *loaded*, not what it is; transformers copies them into
# tokenizer_config.json, where they would make two saves of one tokenizer differ
LOAD_TIME_TOKENIZER_KEYS = ("local_files_only", "cache_dir", "force_download", "proxies", "token", "revision",
                            "_commit_hash", "name_or_path")
# keys of config.json that record which library version saved it, not what the model is: left out of the saved
# folder and of the weights fingerprint, so another transformers release writes the same bytes
WRITER_VERSION_KEYS = ("transformers_version",)
# keys of a `BertForPreTraining` state dict that an encoder folder never holds
PRETRAINING_HEAD_PREFIXES = ("cls.",)


def read_source(folder: str | Path) -> dict[str, Any] | None:
    """The folder's provenance, or None for a checkpoint not written by `bertrs finetune` (a base model)."""
    path = Path(folder) / SOURCE_FILE
    return read_json(path) if path.is_file() else None


def normalize_tokenizer_config(folder: str | Path) -> None:
    """Drop load-time options from the saved tokenizer_config.json and write it with sorted keys."""
    path = Path(folder) / TOKENIZER_CONFIG_FILE
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    for key in LOAD_TIME_TOKENIZER_KEYS:
        config.pop(key, None)
    path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def model_settings(folder: str | Path) -> dict[str, Any]:
    """config.json's settings without the keys that name the library version which saved it.

    Parameters
    ----------
    folder
        An encoder folder, or any checkpoint folder holding a config.json.

    Returns
    -------
    dict
        The parsed config.json minus `WRITER_VERSION_KEYS`.
    """
    config = read_json(Path(folder) / CONFIG_FILE)
    for key in WRITER_VERSION_KEYS:
        config.pop(key, None)
    return config


def normalize_model_config(folder: str | Path) -> None:
    """Rewrite the saved config.json without the writer's version and with sorted keys."""
    path = Path(folder) / CONFIG_FILE
    if path.is_file():
        path.write_text(json.dumps(model_settings(folder), indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def encoder_module(model):
    """The bare `BertModel` inside a model with pre-training heads (`BertForPreTraining`, `BertForMaskedLM`)."""
    return getattr(model, "bert", model)


def load_bert(folder: str | Path):
    """(`BertModel`, tokenizer, missing keys) from an encoder folder; refuses a folder that holds heads."""
    from transformers import AutoTokenizer, BertModel

    try:
        model, info = BertModel.from_pretrained(str(folder), output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except OSError as error:
        raise DataError(f"{folder}: cannot load a BERT encoder ({error})") from None
    heads = [k for k in info.get("unexpected_keys", []) if k.startswith(PRETRAINING_HEAD_PREFIXES)]
    if heads:
        log.warning("%s: holds pre-training heads the encoder does not use (%d tensors); rerun `bertrs finetune`",
                    folder, len(heads))
    return model, tokenizer, sorted(info.get("missing_keys", []))
