"""Model name -> everything the library knows of that model: the one table of models.

Each entry holds how to build the model from its `models.<name>` section, the section's dataclass, whether it reads
an embedding cache, and its memory estimate with the settings that shrink it. No other module of the library
branches on a model's name. The names themselves are the fields of `pipeline.config.ModelsConfig` (which
`params.yaml` is validated against, without importing torch); `check_registry` below ties this table to them at
import, so a model added in one place and not the other fails at once, naming the difference.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pipeline.config import (
    MODELS, TEXT_MODELS, BertRSConfig, ConfigError, EASEConfig, FusionConfig, MFConfig, ModelsConfig, NCFConfig,
    PopConfig, RankingConfig, RunSpec, TrainConfig,
)
from pipeline.data.prepared import PreparedData, load_reviews
from pipeline.embeddings.cache import Profiles, load_profiles
from pipeline.embeddings.recency import with_recent_users
from pipeline.ranking.models.baselines import EASE, MatrixFactorization, Popularity
from pipeline.ranking.models.fusion import FusionRanker
from pipeline.ranking.models.review_ease import ReviewAwareEASE
from pipeline.ranking.models.scalable import ScalableItemModel, resolve_solver
from pipeline.ranking.protocol import Ranker
from pipeline.ranking.training.lagged import profiles_lag_history
from pipeline.ranking.training.memory import (
    EASE_FOOTPRINT, REVIEW_EASE_FOOTPRINT, Shape, counts_bytes, dense_bytes, neural_bytes, scalable_bytes,
)

# (its section, the shared train section, the data's shape) -> (estimated peak bytes of a fit, the settings that
# would shrink it, appended to the budget's own: "; or ...")
MemoryEstimate = Callable[[Any, TrainConfig, Shape], "tuple[float, str]"]


@dataclass(frozen=True)
class ModelEntry:
    """What the library knows of one model name: one row of REGISTRY.

    Attributes
    ----------
    build : (its section, the shared train section, n_users, n_items, profiles or None) -> the untrained model.
    config : The dataclass of its `models.<name>` section.
    memory : (its section, the shared train section, the data's Shape) -> (estimated peak bytes of a fit, the settings
        that would shrink it); checked before a fit allocates anything (training/memory.py).
    reads_text : It needs an embedding cache (a `text_runs` row).
    closed_form : It is fitted by one `fit` and a choice among its candidates, not by the SGD loop.
    """

    # (its section, the shared train section, n_users, n_items, profiles or None) -> the untrained model
    build: Callable[[Any, TrainConfig, int, int, Profiles | None], Ranker]
    config: type  # the dataclass of `models.<name>`
    memory: MemoryEstimate  # checked before a fit allocates anything (training/memory.py)
    reads_text: bool = False  # needs an embedding cache (a `text_runs` row)
    closed_form: bool = False  # fitted by one `fit` and a choice among its candidates, not by the SGD loop


def _pop(section: PopConfig, shared: TrainConfig, n_users: int, n_items: int, profiles) -> Ranker:
    return Popularity(n_users, n_items)


def _mf(section: MFConfig, shared: TrainConfig, n_users: int, n_items: int, profiles) -> Ranker:
    return MatrixFactorization(n_users, n_items, section.factors, section.loss)


def _ease(section: EASEConfig, shared: TrainConfig, n_users: int, n_items: int, profiles) -> Ranker:
    return EASE(n_users, n_items, section.lambdas[0], lambdas=section.lambdas)


def bert_rs_solver(section: BertRSConfig, shared: TrainConfig, n_items: int) -> str:
    """dense | scalable: what `models.bert_rs.solver` resolves to under `train.memory_budget_gb`."""
    return resolve_solver(section.solver, n_items, shared.memory_budget_gb)


def _bert_rs(section: BertRSConfig, shared: TrainConfig, n_users: int, n_items: int, profiles) -> Ranker:
    if bert_rs_solver(section, shared, n_items) == "scalable":
        solver = section.scalable
        return ScalableItemModel(n_users, n_items, profiles, solver.rank, solver.epochs, solver.batch_users,
                                 solver.learning_rate, solver.text_init, section.text_weights, shared.seed,
                                 solver.patience)
    return ReviewAwareEASE.from_config(n_users, n_items, profiles, section)


def _fusion(branches: tuple[str, ...], literal_paper: bool = False, user_id_dropout: bool = False
            ) -> Callable[..., Ranker]:
    """A fusion head with these branches (of `fusion.BRANCHES`). `literal_paper`: eq. 8 as published whatever the
    section says; `user_id_dropout`: the section's user-ID dropout applies (the configurable text head alone)."""
    def build(section: NCFConfig, shared: TrainConfig, n_users: int, n_items: int, profiles) -> Ranker:
        """The fusion head with these branches, sized by `section` (`profiles` reach the semantic branch only)."""
        text_head = isinstance(section, FusionConfig)  # bert_rs_paper and the NCF models stay as published
        return FusionRanker(
            branches, n_users, n_items, factors=section.factors, mlp_layers=section.mlp_layers,
            dropout=section.dropout, profiles=profiles if "semantic" in branches else None,
            semantic_form=section.semantic_form if text_head else "paper",
            text_similarity=section.text_similarity if text_head else False,
            user_id_dropout=section.user_id_dropout if user_id_dropout else 0.0, literal_paper=literal_paper,
        )
    return build


def _counts_memory(section: Any, shared: TrainConfig, shape: Shape) -> tuple[float, str]:
    return counts_bytes(shape), ""


def _ease_memory(section: EASEConfig, shared: TrainConfig, shape: Shape) -> tuple[float, str]:
    return dense_bytes(shape, EASE_FOOTPRINT), ("; past this size use bert_rs with models.bert_rs.solver: scalable "
                                                "(a low-rank item model, memory O(n_items x rank))")


def _bert_rs_memory(section: BertRSConfig, shared: TrainConfig, shape: Shape) -> tuple[float, str]:
    if bert_rs_solver(section, shared, shape.n_items) == "scalable":
        return scalable_bytes(shape, section.scalable.rank), "; or lower models.bert_rs.scalable.rank"
    return dense_bytes(shape, REVIEW_EASE_FOOTPRINT), ("; or set models.bert_rs.solver: scalable (or auto), the "
                                                       "low-rank item model whose memory is O(n_items x rank) "
                                                       "(scalable alone: without a models.bert_rs.dense section)")


def _neural_memory(name: str) -> MemoryEstimate:
    def estimate(section: NCFConfig, shared: TrainConfig, shape: Shape) -> tuple[float, str]:
        """The SGD loop's estimated peak bytes at the section's factors and negatives, and the settings that lower
        it."""
        return (neural_bytes(shape, section.factors, section.num_negatives),
                f"; or lower models.{name}.factors / models.{name}.num_negatives")
    return estimate


REGISTRY: dict[str, ModelEntry] = {
    "pop": ModelEntry(_pop, PopConfig, _counts_memory, closed_form=True),
    "mf": ModelEntry(_mf, MFConfig, _neural_memory("mf")),
    "ease": ModelEntry(_ease, EASEConfig, _ease_memory, closed_form=True),
    "gmf": ModelEntry(_fusion(("gmf",)), NCFConfig, _neural_memory("gmf")),
    "mlp": ModelEntry(_fusion(("mlp",)), NCFConfig, _neural_memory("mlp")),
    "neumf": ModelEntry(_fusion(("gmf", "mlp")), NCFConfig, _neural_memory("neumf")),
    "bert_rs": ModelEntry(_bert_rs, BertRSConfig, _bert_rs_memory, reads_text=True, closed_form=True),
    "bert_rs_neural": ModelEntry(_fusion(("semantic", "gmf", "mlp"), user_id_dropout=True), FusionConfig,
                                 _neural_memory("bert_rs_neural"), reads_text=True),
    "bert_rs_paper": ModelEntry(_fusion(("semantic", "gmf", "mlp"), literal_paper=True), NCFConfig,
                                _neural_memory("bert_rs_paper"), reads_text=True),
    "semantic_only": ModelEntry(_fusion(("semantic",)), FusionConfig, _neural_memory("semantic_only"),
                                reads_text=True),
}


def check_registry() -> None:
    """The registry, ModelsConfig's sections and RunSpec's model names agree (names, text flags, config types)."""
    hints = typing.get_type_hints(ModelsConfig)
    problems = []
    if list(REGISTRY) != list(MODELS):
        problems.append(f"registry names {list(REGISTRY)} != ModelsConfig fields {list(MODELS)}")
    for name, entry in REGISTRY.items():
        if name in hints and hints[name] is not entry.config:
            problems.append(f"{name}: registry config {entry.config.__name__} != models.{name} {hints[name].__name__}")
        if entry.reads_text != (name in TEXT_MODELS):
            problems.append(f"{name}: reads_text {entry.reads_text} disagrees with ModelsConfig's text flag")
    if problems:
        raise ConfigError("model registry out of step: " + "; ".join(problems))


def entry(model: str) -> ModelEntry:
    """The registry's entry for model name `model`; an unknown name raises `ConfigError` listing the known ones."""
    if model not in REGISTRY:
        raise ConfigError(f"unknown model {model!r} (known: {', '.join(REGISTRY)})")
    return REGISTRY[model]


def section_type(model: str) -> type:
    """The dataclass of model `model`'s `models.<name>` section."""
    return entry(model).config


def fit_memory(model: str, shape: Shape, config: RankingConfig | None = None) -> tuple[float, str]:
    """A fit's estimated peak bytes and the settings that would shrink it.

    Parameters
    ----------
    model
        A model name of the registry.
    shape
        The data's users, items, training interactions and profile width.
    config
        The ranking settings (the model's section and `train`); the defaults when None.

    Returns
    -------
    tuple of (float, str)
        Bytes, and the advice `training.memory.check_fit` appends to its message.
    """
    config = config or RankingConfig()
    return entry(model).memory(config.section(model), config.train, shape)


def load_model_profiles(cache: str | Path, data: PreparedData, section: Any, shared: TrainConfig,
                        choosing: bool = False) -> Profiles:
    """The cache's profiles, checked against `data`, as a model configured by `section` reads them: with the
    recency-weighted user profiles (one more pass over the cache's reviews) where the dense bert_rs offers that
    match, and, when `choosing` (a fit that chooses settings, `bertrs train`, not a reload), with the lagged view
    where `profiles_lag_history` says so, for every text model (the same pass, which then builds the recent
    profiles too)."""
    profiles = load_profiles(cache, data_fingerprint=data.fingerprint, n_users=data.n_users, n_items=data.n_items)
    recent = isinstance(section, BertRSConfig) and "user_profile_recent" in section.dense.text_matches \
        and bert_rs_solver(section, shared, data.n_items) == "dense"
    lagged = choosing and profiles_lag_history(data, shared)
    if recent or lagged:
        reviews = load_reviews(data.root, columns=["review_id", "user_idx", "time", "split"])
        profiles = with_recent_users(profiles, cache, reviews, lagged=lagged)
    return profiles


def build_model(
    spec: RunSpec, config: RankingConfig, n_users: int, n_items: int, profiles: Profiles | None = None
) -> Ranker:
    """The untrained model for a run, from its model's section (pipeline/ranking/registry.py); `profiles` must
    already be shuffled when the run asks for the ablation."""
    model = entry(spec.model)
    if model.reads_text and profiles is None:
        raise ConfigError(f"model {spec.model} needs an embedding cache (--embeddings)")
    return model.build(config.section(spec.model), config.train, n_users, n_items, profiles)


check_registry()
