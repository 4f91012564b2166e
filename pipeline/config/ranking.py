"""Stage two's sections: `models` (one typed section per model), `runs`' rows, `train`, `evaluate` and
`recommend`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from pipeline.config.loading import ConfigError, check


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
    """`models.ease`: the EASE item model.

    Attributes
    ----------
    lambdas : The L2 penalty lambda, each > 0; with two or more values the one chosen on validation is kept.
    """

    # EASE's L2 penalty lambda; with 2+ values the one with the best validation NDCG@10 is kept
    lambdas: list[float] = field(default_factory=lambda: [500.0])

    def validate(self, key: str) -> None:
        check(len(self.lambdas) >= 1 and min(self.lambdas) > 0, f"{key}.lambdas", "needs values > 0")


@dataclass(frozen=True)
class SGDConfig:
    """What every minibatch-trained ranker reads (pipeline/ranking/training/sgd.py's loop)."""

    factors: int = 32  # embedding size; for NCF, the GMF size and the MLP's last layer (paper: 32 predictive factors)
    num_negatives: int = 1  # sampled negatives per positive, redrawn every epoch (paper: 1)
    epochs: int = 60
    batch_size: int = 256
    learning_rate: float = 1e-3  # paper: 1e-4
    weight_decay: float = 0.0
    patience: int = 8  # epochs without validation NDCG@10 improvement before stopping

    def validate(self, key: str) -> None:
        check(self.factors >= 1, f"{key}.factors", "must be >= 1")
        check(self.num_negatives >= 1, f"{key}.num_negatives", "must be >= 1")
        check(self.epochs >= 1, f"{key}.epochs", "must be >= 1")
        check(self.batch_size >= 1, f"{key}.batch_size", "must be >= 1")
        check(self.learning_rate > 0, f"{key}.learning_rate", "must be > 0")


@dataclass(frozen=True)
class MFConfig(SGDConfig):
    """`models.mf`: matrix factorisation, trained by minibatch SGD (SGDConfig's settings).

    Attributes
    ----------
    loss : "bpr" (pairwise, a positive against its sampled negatives) or "bce" (pointwise binary cross-entropy).
    """

    loss: Literal["bpr", "bce"] = "bpr"  # pairwise BPR or pointwise BCE


@dataclass(frozen=True)
class NCFConfig(SGDConfig):
    """gmf, mlp, neumf and the literal paper model (bert_rs_paper): the fusion head's shared knobs. gmf (and
    semantic_only) have no MLP tower, so they read neither `mlp_layers` nor `dropout`; the knobs stay one shared set
    (params.yaml's anchor), checked alike, so that one edit moves every head."""

    mlp_layers: list[int] = field(default_factory=lambda: [128, 64, 32])  # 3 ReLU layers; input is 2 x 64
    dropout: float = 0.0  # after each MLP layer

    def validate(self, key: str) -> None:
        super().validate(key)
        check(len(self.mlp_layers) >= 1, f"{key}.mlp_layers", "needs at least one layer")
        check(self.mlp_layers[-1] == self.factors, f"{key}.mlp_layers", f"last layer must equal {key}.factors")
        check(0.0 <= self.dropout < 1.0, f"{key}.dropout", "must lie in [0, 1)")


@dataclass(frozen=True)
class FusionConfig(NCFConfig):
    """bert_rs_neural and semantic_only: the fusion head with a configurable text branch."""

    # paper: eq. 8 gates on raw profiles; projected: shared projections of centred profiles
    semantic_form: Literal["paper", "projected"] = "paper"
    text_similarity: bool = False  # add cos(b_u, b_i) of the centred profiles as one more fused input
    user_id_dropout: float = 0.0  # drop a training example's user ID embeddings with this probability

    def validate(self, key: str) -> None:
        super().validate(key)
        check(0.0 <= self.user_id_dropout < 1.0, f"{key}.user_id_dropout", "must lie in [0, 1)")
        # a setting the model would silently ignore is refused (the text-only head has no ID embeddings)
        check(not (key == "models.semantic_only" and self.user_id_dropout), f"{key}.user_id_dropout",
              "semantic_only has no user ID embeddings to drop (the setting is bert_rs_neural's)")


@dataclass(frozen=True)
class DenseSearchConfig:
    """`models.bert_rs.dense`: the grids the dense solver (pipeline/ranking/models/review_ease.py) searches jointly
    on validation, with the section's text weights; the search space itself is
    pipeline/ranking/selection/spaces.py's `ReviewAwareSpace`."""

    text_side_weights: list[float] = field(default_factory=lambda: [0.0, 0.5, 2.0])  # a, in mean interactions per item
    # the late text match: item_neighbours x_u F F^T; user_profile cos(b_u, b_i); user_profile_recent cos(r_u, b_i)
    # with r_u the user's training reviews weighted 1, 1/2, 1/4, ... from the newest back
    text_matches: list[Literal["item_neighbours", "user_profile", "user_profile_recent"]] = field(
        default_factory=lambda: ["item_neighbours", "user_profile", "user_profile_recent"])
    lambdas: list[float] = field(default_factory=lambda: [10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0])  # EASE's lambda
    # ease: ||B||^2; l3ae: ||B - S||^2 with S the text's own item-item model
    regularisers: list[Literal["ease", "l3ae"]] = field(default_factory=lambda: ["ease", "l3ae"])
    whitening: list[bool] = field(default_factory=lambda: [False, True])  # ZCA whitening of the review vectors
    # the weight p of a popularity term (a grid of 2+ values also adds "popularity alone")
    pop_weights: list[float] = field(default_factory=lambda: [0.0, 0.25, 1.0])

    def validate(self, key: str) -> None:
        for name in ("text_side_weights", "text_matches", "lambdas", "regularisers", "whitening", "pop_weights"):
            check(len(getattr(self, name)) >= 1, f"{key}.{name}", "needs at least one value")
        check(min(self.text_side_weights) >= 0, f"{key}.text_side_weights",
              "text weights must be >= 0 (0 switches the text off)")
        check(min(self.lambdas) > 0, f"{key}.lambdas", "must be > 0")
        check(min(self.pop_weights) >= 0, f"{key}.pop_weights", "must be >= 0 (0: no popularity term)")


@dataclass(frozen=True)
class ScalableSolverConfig:
    """`models.bert_rs.scalable`: the low-rank item model past the memory budget
    (pipeline/ranking/models/scalable.py); its text weight is the section's `text_weights`."""

    rank: int = 128  # columns of A in B = A A^T - I
    epochs: int = 10  # at most this many passes over the users; the pass kept is chosen on validation
    patience: int = 3  # passes without a better validation NDCG@10 (item model alone) before stopping
    batch_users: int = 256  # users per Adam step (the loss is closed-form: memory does not grow with it)
    learning_rate: float = 0.01
    text_init: bool = True  # start A from the item profiles' principal directions (else random)

    def validate(self, key: str) -> None:
        for name in ("rank", "epochs", "batch_users", "patience"):
            check(getattr(self, name) >= 1, f"{key}.{name}", "must be >= 1")
        check(self.learning_rate > 0, f"{key}.learning_rate", "must be > 0")


SOLVER_SECTIONS = {"dense": DenseSearchConfig, "scalable": ScalableSolverConfig}  # solver -> its own section


@dataclass(frozen=True)
class BertRSConfig:
    """The default model: a review-aware item model plus w times a text match, both standardised per user.
    `solver` picks the item model (dense: EASE solves, n_items^2 memory; scalable: low-rank, n_items x rank; auto:
    dense while it fits train.memory_budget_gb, recorded in run.json); each solver reads its own section, and a
    section the chosen solver would ignore is refused."""

    solver: Literal["auto", "dense", "scalable"] = "auto"
    text_weights: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 1.0])  # w of the text match (both)
    dense: DenseSearchConfig = field(default_factory=DenseSearchConfig)
    scalable: ScalableSolverConfig = field(default_factory=ScalableSolverConfig)

    def with_solver(self, solver: str) -> "BertRSConfig":
        """This section fixed to `solver` (what a run records it ran), the other solver's section back at its
        defaults: what `auto` chose never reads it, so a fixed solver must not be refused for it."""
        others = {name: section() for name, section in SOLVER_SECTIONS.items() if name != solver}
        return dataclasses.replace(self, solver=solver, **others)

    def validate(self, key: str) -> None:
        check(len(self.text_weights) >= 1, f"{key}.text_weights", "needs at least one value")
        check(min(self.text_weights) >= 0, f"{key}.text_weights", "text weights must be >= 0 (0 switches the text off)")
        for solver, section in SOLVER_SECTIONS.items():
            getattr(self, solver).validate(f"{key}.{solver}")
            # a solver fixed by hand never reads the other's section: settings there would be silently ignored
            ignored = self.solver not in ("auto", solver) and getattr(self, solver) != section()
            check(not ignored, f"{key}.{solver}", f"solver {self.solver} ignores this section; remove it (or set "
                                                  f"{key}.solver: auto or {solver})")


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
        """The section of model `model`; an unknown name raises `ConfigError` listing the known ones."""
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
    # memory (pipeline/ranking/training/memory.py): a fit whose estimated peak exceeds this stops before allocating
    memory_budget_gb: Optional[float] = None  # null = the memory available when the run starts
    # how a closed-form model's grid is chosen on validation (pipeline/ranking/selection/select.py):
    # simplest_within_noise (the simplest setting within one standard error of the best) or best
    choice_rule: Literal["simplest_within_noise", "best"] = "simplest_within_noise"
    # keep a setting beyond a model's plain form (bert_rs: text) only when its validation gain survives
    # cross-fitting over seeded halvings of the validation users (pipeline/ranking/selection/select.py)
    guard_additions: bool = True
    # from 2,000 validation users on, score every candidate on a quarter of them first and only the best few near
    # that screen's best on the rest (a fraction of the search's cost; the same choice unless the screen dropped it)
    screen_search: bool = True
    # the floating-point type a closed-form model's validation grid is scored in (dense bert_rs: its products with
    # the Gram's eigenvectors, its item-model and text parts). float32 halves the bytes and the time of those
    # products; the ranks it compares were float32 already, and the chosen setting is solved in float64 either way
    search_precision: Literal["float64", "float32"] = "float32"
    # once every choice is made on a fit to the training pairs, fit the chosen settings (a closed-form model's
    # grid point, a neural model's epoch count) once more on training + validation pairs, so that test and
    # recommendations are scored from every interaction known before test (pipeline/ranking/training/train.py). Reviews,
    # profiles and text grams stay training-only either way; a run fitted so cannot be evaluated on validation
    refit_with_validation: bool = True

    def __post_init__(self) -> None:
        check(self.memory_budget_gb is None or self.memory_budget_gb > 0, "train.memory_budget_gb",
              "must be > 0 (or null: the available memory)")


@dataclass(frozen=True)
class RankingConfig:
    """What the trainer reads: the shared `train` section and the `models` sections (a run reads only its own)."""

    train: TrainConfig = field(default_factory=TrainConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)

    def section(self, model: str) -> Any:
        """The `models` section of model `model` (`ModelsConfig.section`)."""
        return self.models.section(model)

    def override(self, model: str | None = None, **changes: Any) -> "RankingConfig":
        """A copy with settings changed by field name: a `train` field changes the shared section; any other
        changes `models.<model>`, or, with no model named, every section that has the field at its top level (as
        a shared YAML anchor would: `lambdas` alone then changes ease, not bert_rs's `dense.lambdas`). With a model
        named, a field of one of its nested sections (bert_rs's `dense` and `scalable`) is changed there; a mapping
        given for a nested section changes the fields it names. A name no section has is an error."""
        shared = {f.name for f in dataclasses.fields(TrainConfig)}
        train = dataclasses.replace(self.train, **{k: v for k, v in changes.items() if k in shared})
        rest = {k: v for k, v in changes.items() if k not in shared}
        names = [model] if model is not None else list(MODELS)
        sections, used = {}, set()
        for name in names:
            section = self.section(name)
            if model is not None:
                sections[name] = _replace_nested(section, rest, f"models.{model}")
                used |= set(rest)
                continue
            own = {f.name for f in dataclasses.fields(section)}
            mine = {k: v for k, v in rest.items() if k in own}
            if mine:
                sections[name] = _replace_nested(section, mine, f"models.{name}")
                used |= set(mine)
        if set(rest) - used:
            raise ConfigError(f"no section has setting(s) {sorted(set(rest) - used)}")
        return RankingConfig(train, dataclasses.replace(self.models, **sections))


def _replace_nested(section: Any, changes: dict[str, Any], key: str) -> Any:
    """`section` with `changes` applied: its own fields first, then each nested section's (a mapping given for a
    nested section changes the fields it names). An unknown name raises `ConfigError` naming the known ones."""
    own = {f.name: f for f in dataclasses.fields(section)}
    nested = [name for name, value in vars(section).items() if dataclasses.is_dataclass(value)]
    top, inner = {}, {name: {} for name in nested}
    for name, value in changes.items():
        if name in nested and isinstance(value, dict):
            inner[name].update(value)
        elif name in own:
            top[name] = value
        else:
            homes = [n for n in nested if name in {f.name for f in dataclasses.fields(getattr(section, n))}]
            if len(homes) != 1:
                known = sorted(own) + [f"{n}.{f.name}" for n in nested for f in dataclasses.fields(getattr(section, n))]
                raise ConfigError(f"{key}: no setting {name!r} (known: {known})")
            inner[homes[0]][name] = value
    for name, values in inner.items():
        if values:
            top[name] = _replace_nested(getattr(section, name), values, f"{key}.{name}")
    return dataclasses.replace(section, **top)


@dataclass(frozen=True)
class EvaluateConfig:
    """`evaluate`: how the test split is scored.

    Attributes
    ----------
    ks : The cut-offs K of HR@K and NDCG@K, each >= 1.
    protocols : "sampled" (each held-out positive among its sampled negatives) and / or "full" (against every item).
    batch_users : Users scored at once in full ranking.
    mask_other_splits : Full ranking also masks the user's positives of the other held-out split; training items and
        the split's own positives are masked either way.
    """

    ks: list[int] = field(default_factory=lambda: [1, 3, 5, 10])
    protocols: list[Literal["sampled", "full"]] = field(default_factory=lambda: ["sampled", "full"])
    batch_users: int = 256  # users scored at once in full ranking
    # full ranking also masks the user's positives of the other held-out split (valid when evaluating test), as the
    # sampled candidates (never a positive in any split) do; train items and same-split positives are always masked
    mask_other_splits: bool = True

    def __post_init__(self) -> None:
        check(len(self.ks) >= 1 and all(k >= 1 for k in self.ks), "evaluate.ks", "needs K values >= 1")
        check(len(self.protocols) >= 1, "evaluate.protocols", "needs at least one protocol")
        check(self.batch_users >= 1, "evaluate.batch_users", "must be >= 1")


@dataclass(frozen=True)
class RecommendConfig:
    """`recommend`: the top-K lists written by the recommend stage and served over HTTP.

    Attributes
    ----------
    k : Items per list.
    candidates : Nearest items retrieved from the FAISS index over item profiles before the model re-ranks them.
    popular_fallback : The most popular training items added to every user's candidate pool.
    """

    k: int = 10
    candidates: int = 100  # FAISS candidates before re-ranking
    popular_fallback: int = 100  # popular items added to the candidate pool

