"""Build embedding caches from a prepared-data folder and an encoder folder: the `embed` stage's library half.

Kept here rather than in `stages/embed.py` so that benchmarks and notebooks build caches exactly as the DAG does.
Several caches that share the encoder's weights and differ only in pooling are built from one forward pass.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import pyarrow.parquet as pq
import torch

from pipeline.config import EmbedConfig
from pipeline.data.prepared import FILES, STATS_FILE
from pipeline.embeddings import writer
from pipeline.embeddings.index import IndexChoice
from pipeline.io import DataError, read_json
from pipeline.text.encode import (
    AUTO_INT8_MIN_COSINE,
    AUTO_INT8_MIN_SPEEDUP,
    CPU_ONLY,
    choose_backend,
    cosine_agreement,
    encode_pooled,
    load_encoder,
    set_threads,
)
from pipeline.text.encoders import resolve_encoder, weights_fingerprint
from pipeline.text.static import STATIC_BACKEND, is_static, load_static
from pipeline.text.finetune import SOURCE_FILE
from pipeline.text.openvino_int8 import CALIBRATION_SAMPLE

log = logging.getLogger(__name__)


def _rows(path: Path) -> int:
    if not path.is_file():
        raise DataError(f"{path}: file not found (has `bertrs prepare` run?)")
    return pq.ParquetFile(path).metadata.num_rows


@dataclass(frozen=True)
class EncoderRecipe:
    """Everything needed to load the encoder again in another process (a Ray actor); calling it loads it."""

    path: str
    poolings: tuple[str, ...]
    max_length: int
    batch_size: int
    backend: str  # resolved, never "auto": every process runs what the cache records
    calibration: tuple[str, ...] = ()  # training reviews that set openvino_int8's scales (the same in every process)

    def load(self):
        """Load the encoder this recipe names: a `StaticEncoder` for the static backend, else an `Encoder` that
        pools every one of `poolings` from one forward pass."""
        if self.backend == STATIC_BACKEND:
            return load_static(self.path, pooling=self.poolings[0], max_length=self.max_length,
                               batch_size=self.batch_size)
        return load_encoder(self.path, pooling=self.poolings[0], also_poolings=self.poolings,
                            max_length=self.max_length, batch_size=self.batch_size, backend=self.backend,
                            calibration=self.calibration)

    def __call__(self):
        return functools.partial(encode_pooled, self.load(), poolings=self.poolings)


def _timed(encode) -> tuple[Mapping, float]:
    start = time.perf_counter()
    vectors = encode()
    return vectors, time.perf_counter() - start


def backend_check(encoder, texts: Sequence[str], poolings: Sequence[str]) -> dict:
    """Cosine of the chosen backend's vectors against fp32 on `texts`, and its speed over fp32's on them; identity
    when the backend is fp32, and a static encoder has no transformer to compare with.

    Each path first encodes one batch untimed (the int8 copy is made and both paths' kernels and buffers are warm),
    then the whole sample timed. The returned `speedup` is a wall-clock figure: the caller logs it and keeps it out of
    meta.json (which records the backend it led to), so a rerun writes the same bytes.
    """
    if encoder.backend == STATIC_BACKEND:
        return {"reference": "none: a static encoder runs no transformer", "sample": 0}
    if encoder.backend == "torch" or not texts:
        return {"reference": "torch (fp32)", "sample": 0}
    reference_encoder = dataclasses.replace(encoder, backend="torch")
    encoder.runner()
    warm_up = list(texts[:encoder.batch_size])
    encode_pooled(encoder, warm_up, poolings)
    encode_pooled(reference_encoder, warm_up, poolings)
    fast, seconds = _timed(lambda: encode_pooled(encoder, texts, poolings))
    reference, fp32_seconds = _timed(lambda: encode_pooled(reference_encoder, texts, poolings))
    worst = min((cosine_agreement(fast[p], reference[p]) for p in poolings), key=lambda c: c["min"])
    return {"reference": "torch (fp32)", "sample": len(texts), "cosine_mean": worst["mean"],
            "cosine_min": worst["min"], "speedup": fp32_seconds / max(seconds, 1e-9)}


def auto_fallback(check: dict) -> str | None:
    """Why auto's int8 pick gives way to fp32 (None when it keeps it): its cosine to fp32 on the check sample is
    below `AUTO_INT8_MIN_COSINE`, or it encoded that sample less than `AUTO_INT8_MIN_SPEEDUP` times as fast as fp32
    (a margin over timing noise: a pick that only ties fp32 costs cosine for nothing), or there was no sample. The
    reason names no wall-clock figure, so that it is the same on every rerun."""
    if "cosine_mean" not in check:
        return "no check sample"
    if check["cosine_mean"] < AUTO_INT8_MIN_COSINE:
        return f"cosine_mean {check['cosine_mean']:.4f} < {AUTO_INT8_MIN_COSINE}"
    if check["speedup"] < AUTO_INT8_MIN_SPEEDUP:
        return f"less than {AUTO_INT8_MIN_SPEEDUP}x as fast as fp32 on the check sample"
    return None


def int8_model(calibration: Sequence[str]) -> dict:
    """What fixes an openvino_int8 model besides the weights: its calibration texts (a fingerprint and how many) and
    the OpenVINO and NNCF releases that quantised it (part of the resume key: shards of two int8 models never mix)."""
    import importlib.metadata

    digest = hashlib.sha256(json.dumps(list(calibration)).encode()).hexdigest()[:16]
    return {"calibration_fingerprint": digest, "calibration_sample": len(calibration),
            **{name: importlib.metadata.version(name) for name in ("openvino", "nncf")}}


def _check_sample(reviews_path: Path, n: int) -> list[str]:
    """The first n training reviews (only training text ever informs a choice, even a numerical check, or sets an
    int8 scale)."""
    if n == 0:
        return []
    texts = []
    for batch in pq.ParquetFile(reviews_path).iter_batches(batch_size=max(n, 1024), columns=["text", "split"]):
        texts += [t for t, s in zip(batch.column("text").to_pylist(), batch.column("split").to_pylist())
                  if s == "train"]
        if len(texts) >= n:
            break
    return texts[:n]


def index_choice(config: EmbedConfig) -> IndexChoice:
    """The embed section's index_* settings as the index builder takes them."""
    return IndexChoice(index_type=config.index_type, exact_below=config.index_exact_below, nlist=config.index_nlist,
                       nprobe=config.index_nprobe, hnsw_m=config.index_hnsw_m, ef_search=config.index_ef_search,
                       ef_construction=config.index_ef_construction)


def build_caches(prepared: str | Path, encoder_dir: str, configs: Mapping[str, EmbedConfig],
                 outs: Mapping[str, str | Path], *, on_shard=None, progress: bool = True) -> dict[str, dict]:
    """Encode every review of `prepared` once with `encoder_dir` and write one cache per name.

    `configs[name]` may differ only in pooling (one forward pass serves them all); returns {name: meta}.
    """
    names = list(configs)
    first = configs[names[0]]
    for name in names[1:]:
        if dataclasses.replace(configs[name], pooling=first.pooling) != first:
            raise DataError(f"encoders {names[0]} and {name} share one pass, so their embed settings may differ "
                            "only in pooling")
    poolings = [configs[n].pooling for n in names]
    if len(set(poolings)) != len(poolings):
        raise DataError(f"encoders {names} share one pass but repeat a pooling ({poolings}): one cache per pooling")
    prepared = Path(prepared)
    set_threads(first.threads)
    resolved = resolve_encoder(encoder_dir)
    source_file = Path(resolved) / SOURCE_FILE
    source = read_json(source_file) if source_file.is_file() else {"base": encoder_dir}
    # GPU actors, driver without a GPU: the driver cannot ask the GPU for bf16 or run the check, so it picks fp16
    # (every CUDA GPU runs it) and records that the check was not run
    gpu_actors = first.engine == "ray" and first.ray.num_gpus_per_actor > 0
    blind = gpu_actors and not torch.cuda.is_available()
    backend = choose_backend(first.backend, cuda=True, cuda_bf16=False) if blind else choose_backend(first.backend)
    if is_static(resolved):
        backend, blind = STATIC_BACKEND, False  # numpy on the CPU, in any process
    reviews_path = prepared / FILES["reviews"][0]
    # the check sample, then the training reviews after it that calibrate openvino_int8 (the check sample itself
    # only where the training split has no others)
    n_check = first.backend_check_sample
    sample = [] if blind else _check_sample(reviews_path, n_check + CALIBRATION_SAMPLE)
    checked, calibration = sample[:n_check], sample[n_check:] or sample
    recipe = EncoderRecipe(resolved, tuple(poolings), first.max_length,
                           (first.ray.batch_size if first.engine == "ray" else None) or first.batch_size, backend,
                           tuple(calibration) if backend == "openvino_int8" else ())
    encoder = dataclasses.replace(recipe, backend="torch").load() if blind else recipe.load()
    if blind:
        check = {"reference": "torch (fp32)", "sample": 0, "note": "not measured: the driver has no GPU"}
    else:
        check = backend_check(encoder, checked, poolings)
    reason = auto_fallback(check) if first.backend == "auto" and backend in CPU_ONLY else None
    if "speedup" in check:  # a wall-clock figure: logged, kept out of meta.json (a rerun writes the same bytes)
        log.info("embed: %s encoded the %d check reviews %.2fx as fast as fp32 (cosine %.4f)", backend,
                 check["sample"], check.pop("speedup"), check["cosine_mean"])
    if reason:
        # int8 as auto's pick must agree with fp32 on the cache's own sample and be faster there
        log.info("embed: auto's %s pick gives way to fp32 (%s)", backend, reason)
        picked, backend = backend, "torch"
        recipe = dataclasses.replace(recipe, backend="torch", calibration=())
        encoder = dataclasses.replace(encoder, backend="torch", calibration=())
        check = {"reference": "torch (fp32)", "sample": 0,
                 "note": f"fp32: auto's int8 pick ({picked}) fell back ({reason})"}
    common = {
        "encoder_path": str(encoder_dir),
        "source_model": source.get("base"),
        "finetuned": source.get("finetuned"),
        "weights_fingerprint": weights_fingerprint(resolved),
        "max_length": encoder.max_length,
        "dim": encoder.dim,
        "backend": backend,
        "backend_requested": first.backend,
        "backend_check": check,
        "data_fingerprint": read_json(prepared / STATS_FILE)["fingerprint"],
        "profile": first.profile,
        **({"int8_model": int8_model(recipe.calibration)} if backend == "openvino_int8" else {}),
    }
    metas = {configs[n].pooling: {"encoder": n, "pooling": configs[n].pooling, **common} for n in names}
    if first.engine == "ray":
        from pipeline.embeddings.engines.ray import RayEngine

        del encoder  # the actors load their own
        engine = RayEngine(recipe, address=first.ray.address, num_actors=first.ray.num_actors,
                           num_cpus_per_actor=first.ray.num_cpus_per_actor,
                           num_gpus_per_actor=first.ray.num_gpus_per_actor, on_shard=on_shard)
    else:
        from pipeline.embeddings.engines.local import LocalEngine

        engine = LocalEngine(functools.partial(encode_pooled, encoder, poolings=poolings), on_shard)
    final = writer.write_embedding_caches(
        {configs[n].pooling: outs[n] for n in names},
        reviews_path,
        engine,
        metas=metas,
        n_users=_rows(prepared / FILES["users"][0]),
        n_items=_rows(prepared / FILES["items"][0]),
        shard_size=first.shard_size,
        normalize_profiles=first.normalize_profiles,
        index_metric=first.index_metric,
        progress=progress,
        index_choice=index_choice(first),
    )
    return {n: final[configs[n].pooling] for n in names}


def build_cache(prepared: str | Path, encoder_dir: str, name: str, config: EmbedConfig, out: str | Path,
                **kwargs) -> dict:
    """One cache: `build_caches` with one name."""
    return build_caches(prepared, encoder_dir, {name: config}, {name: out}, **kwargs)[name]
