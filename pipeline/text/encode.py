"""Batched review encoding with a BERT encoder: length-sorted batches, dynamic padding, three poolings.

Pooling (recorded in the cache):
    pooler  b_s = tanh(W_p h_[CLS] + b_p), the BERT pooler output (paper eq. 7); the default
    mean    attention-masked mean of the last hidden states
    cls     the raw last hidden state at [CLS]

Speed: texts are tokenised once, sorted by length and batched so that a batch pads only to its own longest text,
which removes most of the padding work on short reviews; `torch.inference_mode` drops autograd bookkeeping.
One forward pass can be pooled several ways (`encode_pooled`), so encoders that share weights and differ only in
pooling never encode the same text twice.

Backends: "torch" is fp32; "torch_bf16" runs the matmuls in bfloat16 (autocast), fast on CPUs with AVX-512 BF16 /
AMX and on recent GPUs; "torch_fp16" is float16 autocast, CUDA only; "torch_int8" runs the attention block's
projections (query, key, value, output) with int8 weights (per output channel) and int8 activations quantised on the fly
(torch dynamic quantisation; CPU only; the other layers stay fp32, `INT8_LAYERS`); "openvino_int8" runs the whole
encoder in OpenVINO with int8 weights and activations whose scales calibration texts set (CPU only, the `openvino`
extra; pipeline/text/openvino_int8.py); "auto" (the default) picks bf16 or fp16 where the hardware runs it natively,
int8 on CPUs with native int8 dot products (VNNI, AMX-INT8: openvino_int8 where installed, else torch_int8), fp32
elsewhere (`choose_backend`); the cache keeps auto's int8 pick only where its cosine to fp32 on the check sample is
at least `AUTO_INT8_MIN_COSINE` and it encodes that sample at least `AUTO_INT8_MIN_SPEEDUP` times as fast as fp32
(pipeline/embeddings/build.py). Under
`make repro`'s AVX2 code paths (`ATEN_CPU_CAPABILITY=avx2`) "auto" sees only AVX2's CPU features, so it runs fp32
on every CPU-only machine and writes the same bytes (on a CUDA machine it still picks bf16 or fp16). Vectors are
always returned as float32.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.io import DataError

log = logging.getLogger(__name__)

POOLINGS = ("pooler", "mean", "cls")
BACKENDS = ("torch", "torch_bf16", "torch_fp16", "torch_int8", "openvino_int8")  # what an Encoder runs; "auto" is
# resolved before
CPU_ONLY = ("torch_int8", "openvino_int8")  # backends whose kernels are CPU kernels: the model stays on the CPU
# the linear layers torch_int8 quantises (names match so): the attention block's, whose int8 copy kept the pooled
# vectors' cosine to fp32 highest of the sets above 0.99 (benchmarks/results/int8_layers.md); the feed-forward
# projections, which cost the most cosine, stay fp32
INT8_LAYERS = (".attention.self.query", ".attention.self.key", ".attention.self.value", ".attention.output.dense")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with native bfloat16 matmuls
CPU_INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")  # ... and with native int8 dot products
AUTO_INT8_MIN_COSINE = 0.99  # "auto" keeps int8 only where its mean cosine to fp32 on the check sample reaches this
AUTO_INT8_MIN_SPEEDUP = 1.1  # ... and where it encodes that sample at least this many times as fast as fp32
CAPPED_CAPABILITIES = ("default", "avx2")  # ATEN_CPU_CAPABILITY values that hold torch below AVX-512 (make repro)


@dataclass
class Encoder:
    """A loaded encoder: `BertModel` (eval mode) and its tokenizer, plus how to pool and run it."""

    model: torch.nn.Module
    tokenizer: object
    pooling: str = "pooler"
    max_length: int = 128
    batch_size: int = 64
    backend: str = "torch"
    calibration: tuple[str, ...] = ()  # texts that set openvino_int8's activation scales (training reviews)
    _runner: object = field(default=None, init=False, repr=False)  # `runner`'s int8 copy, made once

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise DataError(f"pooling {self.pooling!r} is not one of {POOLINGS}")
        if self.backend not in BACKENDS:
            raise DataError(f"backend {self.backend!r} is not one of {BACKENDS}")
        limit = getattr(self.model.config, "max_position_embeddings", self.max_length)
        self.max_length = min(self.max_length, limit)

    @property
    def dim(self) -> int:
        """The encoder's hidden size: the dimension of its pooled vectors."""
        return int(self.model.config.hidden_size)

    def runner(self):
        """What the forward pass calls: the model, or for an int8 backend its quantised copy (the model itself is
        left fp32, so that the backend check can encode with it)."""
        if self.backend not in CPU_ONLY:
            return self.model
        if self._runner is None:
            if self.backend == "torch_int8":
                self._runner = quantised_int8(self.model)
            else:
                from pipeline.text.openvino_int8 import OpenVinoInt8

                self._runner = OpenVinoInt8(self.model, self.tokenizer, self.calibration, self.max_length)
        return self._runner

    def __call__(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        return encode_texts(self, texts, progress=progress)


def cpu_flags() -> set[str]:
    """The CPU feature flags Linux reports (empty elsewhere: then "auto" keeps fp32 on CPU), as `usable_flags`
    leaves them under this process's `ATEN_CPU_CAPABILITY`."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return usable_flags(flags, os.environ.get("ATEN_CPU_CAPABILITY"))


def usable_flags(flags: set[str], capability: str | None) -> set[str]:
    """`flags` less those beyond AVX2 when torch is held to its AVX2 (or default) kernels, as `make repro` holds it:
    the reduced-precision backends are then off, as on an AVX2-only machine, and every machine writes fp32's bytes.

    Parameters
    ----------
    flags : CPU feature flags as /proc/cpuinfo names them.
    capability : The `ATEN_CPU_CAPABILITY` setting (None or "" when unset).
    """
    if (capability or "").lower() not in CAPPED_CAPABILITIES:
        return set(flags)
    return {f for f in flags if not f.startswith(("avx512", "amx", "avx_vnni"))}


def choose_backend(requested: str, *, cuda: bool | None = None, cuda_bf16: bool | None = None,
                   flags: set[str] | None = None) -> str:
    """Resolve "auto" for this hardware.

    Parameters
    ----------
    requested : "auto" or one of `BACKENDS` (kept as it is).
    cuda, cuda_bf16 : Whether a CUDA device is present and runs bf16 (asked of torch when None).
    flags : The CPU's feature flags (`cpu_flags()` when None).

    Returns
    -------
    On CUDA bf16 where supported, else fp16; on a CPU bf16 where it has native bf16 matmuls, else int8 where it has
    native int8 dot products (openvino_int8 where OpenVINO is installed, else torch_int8), else fp32. Reduced
    precision only where the hardware runs it natively: emulated bf16 on an AVX2 CPU is slower than fp32, and so is
    OpenVINO's int8 without VNNI. The int8 pick is provisional: the cache builder measures it against fp32.
    """
    if requested != "auto":
        if requested not in BACKENDS:
            raise DataError(f"backend {requested!r} is not one of {('auto',) + BACKENDS}")
        return requested
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:
        cuda_bf16 = torch.cuda.is_bf16_supported() if cuda_bf16 is None else cuda_bf16
        return "torch_bf16" if cuda_bf16 else "torch_fp16"
    flags = cpu_flags() if flags is None else flags
    if any(f in flags for f in CPU_BF16_FLAGS):
        return "torch_bf16"
    if not any(f in flags for f in CPU_INT8_FLAGS):
        return "torch"
    from pipeline.text import openvino_int8

    return "openvino_int8" if openvino_int8.available() else "torch_int8"


def set_threads(threads: int | None) -> None:
    """Torch intra-op threads; None keeps torch's default (all cores)."""
    if threads is not None:
        if threads < 1:
            raise DataError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def quantised_int8(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model` whose `INT8_LAYERS` linear layers hold int8 weights (one scale per output channel) and
    quantise their input on the fly (torch dynamic quantisation, the x86 / fbgemm kernels on CPU)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if next(model.parameters()).device.type != "cpu":
        raise DataError("backend torch_int8 runs on CPU only (use auto, torch_bf16 or torch_fp16 on a GPU)")
    layers = {name: per_channel_dynamic_qconfig for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) and name.endswith(INT8_LAYERS)}
    if not layers:
        raise DataError(f"backend torch_int8: the encoder has no linear layer named *{' or *'.join(INT8_LAYERS)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        return quantize_dynamic(model, layers, dtype=torch.qint8, inplace=False)


def load_encoder(path: str | Path, *, pooling: str = "pooler", max_length: int = 128, batch_size: int = 64,
                 backend: str = "torch", also_poolings: Sequence[str] = (), calibration: Sequence[str] = ()) -> Encoder:
    """Load a `BertModel` checkpoint; pooler pooling (as `pooling` or one of `also_poolings`, for
    `encode_pooled`) refuses a checkpoint whose pooler weights are missing. `backend` "auto" is resolved here;
    `calibration` texts set openvino_int8's scales."""
    from transformers import AutoTokenizer, BertModel

    try:
        model, info = BertModel.from_pretrained(str(path), output_loading_info=True)
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except OSError as error:
        raise DataError(f"{path}: cannot load a BERT encoder ({error})") from None
    missing = sorted(info.get("missing_keys", []))
    if "pooler" in (pooling, *also_poolings) and any(k.startswith("pooler.") for k in missing):
        raise DataError(f"{path}: checkpoint has no pooler weights; use pooling 'mean' or 'cls' (missing: {missing})")
    if missing:
        log.warning("%s: weights initialised at random (absent from the checkpoint): %s", path, missing)
    model.eval()
    backend = choose_backend(backend)
    if torch.cuda.is_available() and backend not in CPU_ONLY:  # the batches follow the model's device
        model.to("cuda")  # (int8's kernels are CPU kernels: it stays there)
    return Encoder(model, tokenizer, pooling=pooling, max_length=max_length, batch_size=batch_size, backend=backend,
                   calibration=tuple(calibration))


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


def _autocast(backend: str, device: torch.device):
    dtypes = {"torch_bf16": torch.bfloat16, "torch_fp16": torch.float16}
    if backend in dtypes:
        return torch.autocast(device.type, dtype=dtypes[backend])
    return contextlib.nullcontext()


def encode_texts(encoder: Encoder, texts: Sequence[str], progress: bool = False) -> np.ndarray:
    """(n, dim) float32 vectors for `texts`, in input order, pooled the encoder's way."""
    return encode_pooled(encoder, texts, (encoder.pooling,), progress=progress)[encoder.pooling]


@torch.inference_mode()
def encode_pooled(encoder: Encoder, texts: Sequence[str], poolings: Sequence[str],
                  progress: bool = False) -> Mapping[str, np.ndarray]:
    """{pooling: (n, dim) float32} for `texts`, in input order, every pooling from the same forward pass.

    The one encoding function both engines (local, Ray) call.
    """
    unknown = [p for p in poolings if p not in POOLINGS]
    if unknown:
        raise DataError(f"pooling {unknown} is not one of {POOLINGS}")
    texts = [t if isinstance(t, str) else "" for t in texts]
    if not isinstance(encoder, Encoder):  # a static encoder (pipeline/text/static.py): mean of its token vectors
        return {p: encoder.encode(texts) for p in poolings}
    out = {p: np.empty((len(texts), encoder.dim), dtype=np.float32) for p in poolings}
    if not texts:
        return out
    tokens = encoder.tokenizer(texts, truncation=True, max_length=encoder.max_length)["input_ids"]
    device = next(encoder.model.parameters()).device
    if encoder.backend == "torch_fp16" and device.type != "cuda":
        raise DataError("backend torch_fp16 needs a CUDA device (use auto, torch or torch_bf16 on CPU)")
    model = encoder.runner()
    batches = list(length_sorted_batches([len(t) for t in tokens], encoder.batch_size))
    for positions in tqdm(batches, desc="encoding", unit="batch", disable=not progress, leave=False):
        batch = encoder.tokenizer.pad({"input_ids": [tokens[p] for p in positions]}, return_tensors="pt")
        mask = batch["attention_mask"].to(device)
        with _autocast(encoder.backend, device):
            output = model(input_ids=batch["input_ids"].to(device), attention_mask=mask)
            for p in poolings:
                out[p][positions] = pool(output, mask, p).float().cpu().numpy()
    return out


def cosine_agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Row-wise cosine between two encodings of the same texts (e.g. bf16 vs fp32)."""
    na = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    nb = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    cos = (na * nb).sum(1)
    return {"mean": float(cos.mean()), "min": float(cos.min()), "p01": float(np.quantile(cos, 0.01))}
