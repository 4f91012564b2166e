"""Typed configuration: one frozen dataclass per `params.yaml` section.

`params.yaml` is the single source of truth for every parameter. Stages load it with `load_params` and hand the typed
objects to library functions, which never read the file themselves. An unknown key, a missing required key or a value
of the wrong type is a `ConfigError` that names the key, so a typo in `params.yaml` fails loudly instead of silently
falling back to a default.

The sections live in one module per stage family (data: `prepare`; text: `encoders`, `finetune`, `embed`; ranking:
`models`, `runs`, `train`, `evaluate`, `recommend`), so that dvc.yaml can name the file a stage reads: a change to a
model's settings re-runs the ranking stages and leaves the encoder stages' outputs, hours at the paper's size, in
place. Import from here; the modules are the layout, not the interface.
"""

from pipeline.config.data import ColumnMapping, PrepareConfig
from pipeline.config.loading import ConfigError, from_dict, to_dict
from pipeline.config.params import Params, load_params
from pipeline.config.ranking import (MODELS, TEXT_MODELS, BertRSConfig, EASEConfig, EvaluateConfig, FusionConfig,
                                     MFConfig, ModelName, ModelsConfig, NCFConfig, PopConfig, RankingConfig,
                                     RecommendConfig, RunSpec, SGDConfig, TrainConfig)
from pipeline.config.text import PACKAGED_ENCODER, EmbedConfig, EncoderSpec, FinetuneConfig, RayEngineConfig

__all__ = [
    "MODELS", "PACKAGED_ENCODER", "TEXT_MODELS", "BertRSConfig", "ColumnMapping", "ConfigError", "EASEConfig",
    "EmbedConfig", "EncoderSpec", "EvaluateConfig", "FinetuneConfig", "FusionConfig", "MFConfig", "ModelName",
    "ModelsConfig", "NCFConfig", "Params", "PopConfig", "PrepareConfig", "RankingConfig", "RayEngineConfig",
    "RecommendConfig", "RunSpec", "SGDConfig", "TrainConfig", "from_dict", "load_params", "to_dict",
]
