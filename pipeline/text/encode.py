"""Batched review encoding with a BERT encoder: length-sorted batches, dynamic padding, three poolings.

Pooling (recorded in the cache):
    pooler  b_s = tanh(W_p h_[CLS] + b_p), the BERT pooler output (paper eq. 7); the default
    mean    attention-masked mean of the last hidden states
    cls     the raw last hidden state at [CLS]

Speed: texts are tokenised once, sorted by length and batched so that a batch pads only to its own longest text,
which removes most of the padding work on short reviews; `torch.inference_mode` drops autograd bookkeeping;
backend "torch_bf16" runs the matmuls in bfloat16 (autocast) on CPUs with AVX-512 BF16 / AMX, and the vectors are
returned as float32.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.io import DataError

log = logging.getLogger(__name__)

POOLINGS = ("pooler", "mean", "cls")
BACKENDS = ("torch", "torch_bf16")


@dataclass
class Encoder:
    """A loaded encoder: `BertModel` (eval mode) and its tokenizer, plus how to pool and run it."""

    model: torch.nn.Module
    tokenizer: object
    pooling: str = "pooler"
    max_length: int = 128
    batch_size: int = 64
    backend: str = "torch"

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise DataError(f"pooling {self.pooling!r} is not one of {POOLINGS}")
        if self.backend not in BACKENDS:
            raise DataError(f"backend {self.backend!r} is not one of {BACKENDS}")
        limit = getattr(self.model.config, "max_position_embeddings", self.max_length)
        self.max_length = min(self.max_length, limit)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def __call__(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        return encode_texts(self, texts, progress=progress)


def set_threads(threads: int | None) -> None:
    """Torch intra-op threads; None keeps torch's default (all cores)."""
    if threads is not None:
        if threads < 1:
            raise DataError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def load_encoder(path: str | Path, *, pooling: str = "pooler", max_length: int = 128, batch_size: int = 64,
                 backend: str = "torch") -> Encoder:
    """Load a `BertModel` checkpoint; pooler pooling refuses a checkpoint whose pooler weights are missing."""
    from transformers import AutoTokenizer, BertModel

    try:
        model, info = BertModel.from_pretrained(str(path), output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except OSError as error:
        raise DataError(f"{path}: cannot load a BERT encoder ({error})") from None
    missing = sorted(info.get("missing_keys", []))
    if pooling == "pooler" and any(k.startswith("pooler.") for k in missing):
        raise DataError(f"{path}: checkpoint has no pooler weights; use pooling 'mean' or 'cls' (missing: {missing})")
    if missing:
        log.warning("%s: weights initialised at random (absent from the checkpoint): %s", path, missing)
    model.eval()
    if torch.cuda.is_available():  # same code path; the batches follow the model's device
        model.to("cuda")
    return Encoder(model, tokenizer, pooling=pooling, max_length=max_length, batch_size=batch_size, backend=backend)


def pool(output, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(batch, seq, d) hidden states -> (batch, d) according to `pooling`."""
    if pooling == "pooler":
        return output.pooler_output
    hidden = output.last_hidden_state
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Positions grouped into batches of similar length (longest first, so memory peaks early, not late)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def _autocast(backend: str):
    if backend == "torch_bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.inference_mode()
def encode_texts(encoder: Encoder, texts: Sequence[str], progress: bool = False) -> np.ndarray:
    """(n, dim) float32 vectors for `texts`, in input order."""
    texts = [t if isinstance(t, str) else "" for t in texts]
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    if not texts:
        return out
    tokens = encoder.tokenizer(texts, truncation=True, max_length=encoder.max_length)["input_ids"]
    device = next(encoder.model.parameters()).device
    batches = list(length_sorted_batches([len(t) for t in tokens], encoder.batch_size))
    for positions in tqdm(batches, desc="encoding", unit="batch", disable=not progress, leave=False):
        batch = encoder.tokenizer.pad({"input_ids": [tokens[p] for p in positions]}, return_tensors="pt")
        mask = batch["attention_mask"].to(device)
        with _autocast(encoder.backend):
            output = encoder.model(input_ids=batch["input_ids"].to(device), attention_mask=mask)
            vectors = pool(output, mask, encoder.pooling)
        out[positions] = vectors.float().cpu().numpy()
    return out


def cosine_agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Row-wise cosine between two encodings of the same texts (e.g. bf16 vs fp32)."""
    na = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    nb = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    cos = (na * nb).sum(1)
    return {"mean": float(cos.mean()), "min": float(cos.min()), "p01": float(np.quantile(cos, 0.01))}
