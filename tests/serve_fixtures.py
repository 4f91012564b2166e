"""Serving fixtures: a tiny project folder (prepared data, a tiny random-BERT cache, trained bert_rs and pop models)
laid out as the DAG writes it, with the cache recorded relative to the project root as `bertrs train` records it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from pipeline.config import EmbedConfig, RankingConfig, RunSpec, TrainConfig
from pipeline.data.prepared import load_prepared
from pipeline.embeddings.build import build_cache
from pipeline.embeddings.cache import load_profiles
from pipeline.ranking.checkpoint import save_checkpoint
from pipeline.ranking.training.train import train

SERVE_TRAIN = RankingConfig(TrainConfig(device="cpu", seed=0)).override(
    factors=8, mlp_layers=[16, 8], epochs=2, batch_size=256).override(
    "bert_rs", text_side_weights=[0.0, 1.0], text_matches=["user_profile"], text_weights=[0.5])
TINY_EMBED = EmbedConfig(pooling="mean", max_length=48, batch_size=32, shard_size=128)
OTHER_EMBED = EmbedConfig(pooling="cls", max_length=48, batch_size=32, shard_size=128)  # another cache identity


@dataclass(frozen=True)
class ServeProject:
    root: Path  # the project folder: data/prepared, data/embeddings/tiny, data/models/{bert_rs,pop}
    other_cache: Path  # a cache of the same data built with other pooling: not the one bert_rs was trained with
    encoder: Path

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared"

    @property
    def cache(self) -> Path:
        return self.root / "data" / "embeddings" / "tiny"

    def model(self, run: str) -> Path:
        return self.root / "data" / "models" / run


@pytest.fixture(scope="session")
def serve_project(tmp_path_factory, prepared_dir, tiny_encoder_master) -> ServeProject:
    import shutil

    root = tmp_path_factory.mktemp("serve_project")
    shutil.copytree(prepared_dir, root / "data" / "prepared")
    before, cwd = torch.get_num_threads(), Path.cwd()
    torch.set_num_threads(1)
    try:
        os.chdir(root)  # stages run from the project root and record paths relative to it
        build_cache("data/prepared", str(tiny_encoder_master), "tiny", TINY_EMBED, "data/embeddings/tiny")
        other = root / "other_cache"
        build_cache("data/prepared", str(tiny_encoder_master), "tiny", OTHER_EMBED, other)
        data = load_prepared("data/prepared")
        profiles = load_profiles("data/embeddings/tiny", data_fingerprint=data.fingerprint)
        for run, spec in (("bert_rs", RunSpec(model="bert_rs", embeddings="tiny")), ("pop", RunSpec(model="pop"))):
            result = train(spec, SERVE_TRAIN, data, profiles if spec.embeddings else None, progress=False)
            save_checkpoint(f"data/models/{run}", result, spec, SERVE_TRAIN, data,
                            profiles if spec.embeddings else None,
                            "data/embeddings/tiny" if spec.embeddings else None, run)
    finally:
        os.chdir(cwd)
        torch.set_num_threads(before)
    return ServeProject(root, other, tiny_encoder_master)

