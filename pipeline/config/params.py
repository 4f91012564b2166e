"""The whole of `params.yaml`: every section, the checks that span sections, and `load_params`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pipeline.config.data import PrepareConfig
from pipeline.config.loading import ConfigError, check, from_dict
from pipeline.config.ranking import (TEXT_MODELS, EvaluateConfig, ModelsConfig, RankingConfig, RecommendConfig,
                                     RunSpec, TrainConfig)
from pipeline.config.text import EmbedConfig, EncoderSpec, FinetuneConfig


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
        """What the trainer reads: `train` and `models` as one RankingConfig."""
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
            check(name in self.encoders, "embed.shared_passes" if name not in self.embed.single_passes
                  else "embed.single_passes", f"{name!r} is not one of encoders: {sorted(self.encoders)}")
        twice = sorted({n for n in passes if passes.count(n) > 1})
        check(not twice, "embed.single_passes", f"encoder(s) {twice} named in more than one pass")
        left_out = sorted(set(self.encoders) - set(passes)) if passes else []
        check(not left_out, "embed.single_passes", f"encoder(s) {left_out} are in no pass, so no stage embeds them")
        for first, second in self.embed.shared_passes.items():
            same = self.encoders[first].model == self.encoders[second].model
            untuned = self.finetune_reason(first) is not None and self.finetune_reason(second) is not None
            check(same and untuned, f"embed.shared_passes.{first}",
                  f"{first} and {second} share a pass only with the same model and no fine-tuning")
        for name, spec in self.encoders.items():
            check(not spec.static or self.embed_for(name).pooling == "mean", f"encoders.{name}.pooling",
                  "a static encoder pools by the mean of its token vectors: set pooling: mean")
            check(not spec.static or name not in {**self.embed.shared_passes}.keys() | set(
                self.embed.shared_passes.values()), f"encoders.{name}.static",
                  "a static encoder has its own pass (embed.single_passes), not a shared one")
        twice = sorted(set(self.runs) & set(self.text_runs))
        check(not twice, "text_runs", f"run name(s) {twice} also in runs")
        for name, run in self.runs.items():
            key = f"runs.{name}"
            check(run.model not in TEXT_MODELS, f"{key}.model",
                  f"model {run.model} reads an embedding cache: put the run in text_runs")
            check(run.embeddings is None, f"{key}.embeddings", f"model {run.model} reads no embeddings")
            check(not run.shuffle, f"{key}.shuffle", f"model {run.model} has no profiles to shuffle")
        for name, run in self.text_runs.items():
            key = f"text_runs.{name}"
            check(run.model in TEXT_MODELS, f"{key}.model",
                  f"model {run.model} reads no embeddings: put the run in runs")
            check(run.embeddings is not None, f"{key}.embeddings", f"model {run.model} needs an encoder name")
            check(
                run.embeddings in self.encoders,
                f"{key}.embeddings",
                f"{run.embeddings!r} is not one of encoders: {sorted(self.encoders)}",
            )


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
