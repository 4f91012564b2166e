"""Static encoders: a transformer distilled into one vector per token (model2vec), averaged over a review's tokens.

    distill_static("data/encoders/minilm_static.work/transformer", "data/encoders/minilm_static")
    encoder = load_static("data/encoders/minilm_static", max_length=128)

`encoders.<name>.static: true` makes the `finetune` stage distil the encoder it would otherwise write (the base
checkpoint, or the fine-tuned one) with model2vec's `distill`: every token of the tokenizer's vocabulary is passed
through the transformer once, its output vectors are reduced by PCA and weighted by the token's estimated frequency
(SIF). Only the vocabulary is read, never a review, so the distilled encoder knows nothing of the splits. The embed
stage then encodes a review as the normalised mean of its tokens' vectors: no attention, no transformer pass.
Optional: `pip install model2vec skeletoken` (in the locked environment already); without them the stage stops
and names them.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.io import DataError, atomic_dir, write_json
from pipeline.text.encoder_dir import SOURCE_FILE

STATIC_MODEL_TYPE = "model2vec"  # config.json's model_type in a static encoder's folder
STATIC_POOLING = "mean"  # what a static encoder does to its tokens' vectors; the only pooling it offers
STATIC_BACKEND = "static"  # what a cache of a static encoder records as its backend
PCA_DIMS = 256  # the distilled vectors' width (model2vec's default)
INSTALL = "pip install model2vec skeletoken (both are in requirements.lock)"
# files model2vec writes that describe where it ran rather than what it holds
UNSTABLE_FILES = ("README.md",)


def is_static(folder: str | Path) -> bool:
    """Whether `folder` holds a static (model2vec) encoder rather than a transformer."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        return False
    return json.loads(config.read_text()).get("model_type") == STATIC_MODEL_TYPE


def distill_static(transformer: str | Path, out: str | Path, source: dict | None = None,
                   pca_dims: int = PCA_DIMS) -> None:
    """Distil a BERT encoder folder into a static encoder folder, written atomically.

    Parameters
    ----------
    transformer : A local transformer folder (weights + tokenizer), as the `finetune` stage writes it.
    out : The static encoder's folder; replaced as a whole once the distillation has finished.
    source : What the folder's source.json records of the transformer (base, finetuned), with `static: true`.
    pca_dims : The width of the distilled vectors.

    Raises
    ------
    DataError : model2vec or its distillation dependency is not installed.
    """
    try:
        from model2vec.distill import distill
    except ImportError as error:
        raise DataError(f"encoders with static: true need model2vec's distillation ({error}); {INSTALL}") from None
    model = distill(model_name=str(transformer), pca_dims=pca_dims, device="cpu")
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp))
        for name in UNSTABLE_FILES:
            (Path(tmp) / name).unlink(missing_ok=True)
        config_file = Path(tmp) / "config.json"
        config = json.loads(config_file.read_text())
        config["tokenizer_name"] = "tokenizer.json"  # the folder it was distilled from is not part of the model
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        write_json(Path(tmp) / SOURCE_FILE, {**(source or {}), "static": True})


@dataclass
class StaticEncoder:
    """A static encoder ready to encode: the normalised mean of a review's token vectors.

    Attributes
    ----------
    model : The model2vec `StaticModel`.
    max_length : Tokens read per review (as a transformer's truncation, so both see the same text).
    batch_size : Reviews per call into the model.
    pooling : Always "mean".
    backend : Always "static" (numpy; no transformer backend applies).
    """

    model: object
    max_length: int = 128
    batch_size: int = 1024
    pooling: str = STATIC_POOLING
    backend: str = STATIC_BACKEND

    @property
    def dim(self) -> int:
        """The dimension of the model's token vectors, and so of its pooled vectors."""
        return int(self.model.dim)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float32 vectors."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self.model.encode(list(texts), max_length=self.max_length, batch_size=self.batch_size,
                                    show_progress_bar=False, use_multiprocessing=False)
        return np.asarray(vectors, dtype=np.float32)


def load_static(folder: str | Path, *, pooling: str = STATIC_POOLING, max_length: int = 128,
                batch_size: int = 1024) -> StaticEncoder:
    """Load a static encoder folder.

    Parameters
    ----------
    folder : A folder `distill_static` wrote.
    pooling : Must be "mean" (a static encoder has no [CLS] state and no pooler).
    max_length, batch_size : As `StaticEncoder`'s.

    Raises
    ------
    DataError : The folder is not a static encoder, the pooling is not mean, or model2vec is missing.
    """
    if pooling != STATIC_POOLING:
        raise DataError(f"{folder}: a static encoder pools by the mean of its token vectors; pooling {pooling!r} "
                        f"does not apply (set the encoder's pooling: mean)")
    if not is_static(folder):
        raise DataError(f"{folder}: not a static encoder (config.json model_type is not {STATIC_MODEL_TYPE!r})")
    try:
        from model2vec import StaticModel
    except ImportError as error:
        raise DataError(f"{folder}: a static encoder needs model2vec ({error}); {INSTALL}") from None
    return StaticEncoder(StaticModel.from_pretrained(str(folder)), max_length=max_length, batch_size=batch_size)


def remove_work(work: Path) -> None:
    """Remove the transformer a distillation started from, once the static encoder is written."""
    shutil.rmtree(work, ignore_errors=True)
