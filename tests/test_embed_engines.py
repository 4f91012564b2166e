"""Encoding engines and backends: the Ray engine equals the local one and resumes, backend auto picks by hardware
and records its cosine against fp32, one forward pass serves several poolings, and the cache contract is light."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import typer
from typer.testing import CliRunner

from pipeline.config import ConfigError, EmbedConfig, RayEngineConfig
from pipeline.embeddings import build, cache, writer
from pipeline.embeddings.build import build_cache, build_caches
from pipeline.io import DataError
from pipeline.text import encode, openvino_int8
from pipeline.text.encode import choose_backend, cosine_agreement, encode_pooled, load_encoder, usable_flags
from tests.embed_fixtures import ROOT, embed_then_kill
from tests.text_fixtures import TOY_REVIEWS

CONFIG = EmbedConfig(max_length=32, batch_size=4, shard_size=4, threads=1, backend="torch")
CACHE_FILES = (cache.REVIEWS_FILE, cache.USER_PROFILES_FILE, cache.ITEM_PROFILES_FILE, cache.INDEX_FILE,
               cache.META_FILE)


def ray_config(address=None, **kwargs) -> EmbedConfig:
    return dataclasses.replace(CONFIG, engine="ray", ray=RayEngineConfig(address=address, num_actors=2, **kwargs))


def assert_same_cache(a, b):
    for name in CACHE_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_importing_the_cache_contract_loads_no_faiss_torch_or_transformers():
    code = ("import sys, pipeline.embeddings.cache; "
            "print(sorted(m for m in ('faiss', 'torch', 'transformers', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------------------------
# backend auto


@pytest.mark.parametrize("flags, cuda, cuda_bf16, expected", [
    ({"avx2", "avx512f"}, False, None, "torch"),  # AVX-512 without BF16: emulated bf16 is slower, keep fp32
    ({"avx2", "avx512_bf16"}, False, None, "torch_bf16"),
    ({"avx2", "amx_bf16", "amx_tile"}, False, None, "torch_bf16"),
    ({"avx2", "avx512_vnni"}, False, None, "torch_int8"),  # native int8 dot products (checked against fp32)
    ({"avx2", "avx_vnni"}, False, None, "torch_int8"),
    ({"avx2", "amx_bf16", "amx_int8"}, False, None, "torch_bf16"),  # native bf16 first: closer to fp32
    (set(), True, True, "torch_bf16"),
    (set(), True, False, "torch_fp16"),  # e.g. a T4: fp16 tensor cores, no bf16
])
def test_auto_backend_follows_the_hardware(flags, cuda, cuda_bf16, expected, monkeypatch):
    monkeypatch.setattr(openvino_int8, "available", lambda: False)  # torch's own backends only
    assert choose_backend("auto", flags=flags, cuda=cuda, cuda_bf16=cuda_bf16) == expected
    assert choose_backend("torch", flags={"amx_bf16"}, cuda=True) == "torch"  # an explicit choice is kept
    with pytest.raises(DataError, match="backend 'fp8' is not one of"):
        choose_backend("fp8")


def test_auto_runs_the_int8_dot_products_in_openvino_where_it_is_installed(monkeypatch):
    monkeypatch.setattr(openvino_int8, "available", lambda: True)
    assert choose_backend("auto", flags={"avx2", "avx512_vnni"}, cuda=False) == "openvino_int8"
    assert choose_backend("auto", flags={"avx2", "amx_bf16", "amx_int8"}, cuda=False) == "torch_bf16"
    assert choose_backend("auto", flags={"avx2", "avx512f"}, cuda=False) == "torch"  # int8 without VNNI is slower
    assert choose_backend("auto", flags={"avx2", "avx512_vnni"}, cuda=True, cuda_bf16=True) == "torch_bf16"


@pytest.mark.parametrize("capability", ["avx2", "AVX2", "default"])
def test_make_repros_avx2_code_paths_hold_auto_to_fp32_on_any_cpu(capability, monkeypatch):
    rich = {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni"}
    assert usable_flags(rich, capability) == {"avx2", "fma"}
    assert usable_flags(rich, None) == rich and usable_flags(rich, "avx512") == rich  # uncapped: all of them
    monkeypatch.setattr(openvino_int8, "available", lambda: True)
    assert choose_backend("auto", flags=usable_flags(rich, capability), cuda=False) == "torch"
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", capability)  # and cpu_flags() applies it to this machine's flags
    assert not any(f.startswith(("avx512", "amx", "avx_vnni")) for f in encode.cpu_flags())


def test_cache_records_chosen_backend_and_its_measured_cosine_against_fp32(toy_prepared, tiny_encoder_dir, tmp_path,
                                                                           monkeypatch):
    monkeypatch.setattr(encode, "cpu_flags", lambda: {"avx2", "amx_bf16"})  # pretend: a CPU with native bf16
    monkeypatch.setattr(encode.torch.cuda, "is_available", lambda: False)
    config = dataclasses.replace(CONFIG, backend="auto", backend_check_sample=5, pooling="mean")
    meta = build_cache(toy_prepared, str(tiny_encoder_dir), "tiny", config, tmp_path / "c", progress=False)
    assert meta["backend"] == "torch_bf16" and meta["backend_requested"] == "auto"
    check = meta["backend_check"]
    # the first 5 training reviews, encoded both ways here, give the recorded numbers
    texts = [r[3] for r in TOY_REVIEWS if r[2] == "train"]
    encoder = load_encoder(tiny_encoder_dir, pooling="mean", max_length=32, batch_size=4, backend="torch_bf16")
    fast = encode_pooled(encoder, texts[:5], ["mean"])["mean"]
    exact = encode_pooled(dataclasses.replace(encoder, backend="torch"), texts[:5], ["mean"])["mean"]
    expected = cosine_agreement(fast, exact)
    assert check["sample"] == 5 and "speedup" not in check  # its speed is logged: a wall-clock figure stays out
    assert check["cosine_min"] == pytest.approx(expected["min"], abs=1e-6) and check["cosine_min"] < 1.0
    assert cache.read_meta(tmp_path / "c")["backend_check"] == check
    monkeypatch.setattr(encode, "cpu_flags", lambda: {"avx2"})
    plain = build_cache(toy_prepared, str(tiny_encoder_dir), "tiny", config, tmp_path / "d", progress=False)
    assert plain["backend"] == "torch" and plain["backend_check"]["sample"] == 0  # fp32 is its own reference


def pretend_seconds(monkeypatch, fast: float, fp32: float) -> None:
    """The backend check's two timed passes (the chosen backend's, then fp32's) take these many seconds."""
    durations = iter([fast, fp32] * 10)
    monkeypatch.setattr(build, "_timed", lambda encode_: (encode_(), next(durations)))


def test_auto_keeps_int8_only_where_it_agrees_with_fp32_on_the_check_sample(toy_prepared, tiny_encoder_dir, tmp_path,
                                                                           monkeypatch):
    monkeypatch.setattr(encode, "cpu_flags", lambda: {"avx2", "avx512_vnni"})  # pretend: a CPU with int8 dot products
    monkeypatch.setattr(openvino_int8, "available", lambda: False)
    monkeypatch.setattr(encode.torch.cuda, "is_available", lambda: False)
    pretend_seconds(monkeypatch, fast=1.0, fp32=2.0)
    config = dataclasses.replace(CONFIG, backend="auto", backend_check_sample=5, pooling="mean")
    monkeypatch.setattr(build, "AUTO_INT8_MIN_COSINE", 0.5)
    kept = build_cache(toy_prepared, str(tiny_encoder_dir), "tiny", config, tmp_path / "kept", progress=False)
    assert kept["backend"] == "torch_int8" and kept["backend_check"]["sample"] == 5
    assert 0.5 <= kept["backend_check"]["cosine_mean"] <= 1.0  # measured against fp32 on the cache's sample

    monkeypatch.setattr(build, "AUTO_INT8_MIN_COSINE", 1.0 + 1e-9)  # nothing reaches it: fall back
    fell = build_cache(toy_prepared, str(tiny_encoder_dir), "tiny", config, tmp_path / "fell", progress=False)
    assert fell["backend"] == "torch" and fell["backend_requested"] == "auto"
    assert "fell back" in fell["backend_check"]["note"] and f"{kept['backend_check']['cosine_mean']:.4f}" in \
        fell["backend_check"]["note"]
    build_cache(toy_prepared, str(tiny_encoder_dir), "tiny", dataclasses.replace(config, backend="torch"),
                tmp_path / "fp32", progress=False)
    vectors = [pq.read_table(tmp_path / name / cache.REVIEWS_FILE).column("embedding") for name in ("fell", "fp32")]
    assert vectors[0].equals(vectors[1])  # the fallback's vectors are fp32's, bit for bit


def test_auto_keeps_int8_only_where_it_encodes_the_check_sample_faster_than_fp32_by_a_margin(
        toy_prepared, tiny_encoder_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(encode, "cpu_flags", lambda: {"avx2", "avx512_vnni"})
    monkeypatch.setattr(openvino_int8, "available", lambda: False)
    monkeypatch.setattr(encode.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(build, "AUTO_INT8_MIN_COSINE", 0.5)
    config = dataclasses.replace(CONFIG, backend="auto", backend_check_sample=5, pooling="mean")
    pretend_seconds(monkeypatch, fast=1.0, fp32=1.5)
    kept = build_cache(toy_prepared, str(tiny_encoder_dir), "tiny", config, tmp_path / "kept", progress=False)
    assert kept["backend"] == "torch_int8"
    pretend_seconds(monkeypatch, fast=2.0, fp32=1.5)  # as OpenVINO's int8 on a CPU without VNNI
    slower = build_cache(toy_prepared, str(tiny_encoder_dir), "tiny", config, tmp_path / "slower", progress=False)
    assert slower["backend"] == "torch" and "less than 1.1x as fast as fp32" in slower["backend_check"]["note"]
    pretend_seconds(monkeypatch, fast=1.0, fp32=1.05)  # a tie within timing noise buys nothing for its cosine
    tied = build_cache(toy_prepared, str(tiny_encoder_dir), "tiny", config, tmp_path / "tied", progress=False)
    assert tied["backend"] == "torch"
    explicit = build_cache(toy_prepared, str(tiny_encoder_dir), "tiny",
                           dataclasses.replace(config, backend="torch_int8"), tmp_path / "explicit", progress=False)
    assert explicit["backend"] == "torch_int8"  # a backend asked for by name is kept, measured or not


def test_auto_keeps_int8_from_exactly_the_minimum_speedup_up():
    agrees = {"cosine_mean": 1.0, "cosine_min": 1.0, "sample": 5}
    assert build.auto_fallback({**agrees, "speedup": build.AUTO_INT8_MIN_SPEEDUP}) is None
    assert build.auto_fallback({**agrees, "speedup": build.AUTO_INT8_MIN_SPEEDUP - 1e-6}) is not None


def test_the_speed_check_warms_both_paths_up_on_one_batch_before_timing_them(tiny_encoder_dir, monkeypatch):
    calls = []  # (backend, texts, timed?) of each pass, in order
    clock = {"running": False}
    real_encode = build.encode_pooled

    def encode_pass(encoder, texts, poolings):
        calls.append((encoder.backend, len(texts), clock["running"]))
        return real_encode(encoder, texts, poolings)

    def timed(encode_):
        clock["running"] = True
        vectors = encode_()
        clock["running"] = False
        return vectors, 1.0
    monkeypatch.setattr(build, "encode_pooled", encode_pass)
    monkeypatch.setattr(build, "_timed", timed)
    encoder = load_encoder(tiny_encoder_dir, pooling="mean", max_length=32, batch_size=4, backend="torch_int8")
    texts = [r[3] for r in TOY_REVIEWS][:10]
    build.backend_check(encoder, texts, ["mean"])
    assert calls == [("torch_int8", 4, False), ("torch", 4, False), ("torch_int8", 10, True), ("torch", 10, True)]


def test_an_int8_cache_rebuilt_with_other_timings_writes_the_same_meta_json(toy_prepared, tiny_encoder_dir, tmp_path,
                                                                             monkeypatch):
    monkeypatch.setattr(encode, "cpu_flags", lambda: {"avx2", "avx512_vnni"})
    monkeypatch.setattr(openvino_int8, "available", lambda: False)
    monkeypatch.setattr(encode.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(build, "AUTO_INT8_MIN_COSINE", 0.5)
    config = dataclasses.replace(CONFIG, backend="auto", backend_check_sample=5, pooling="mean")
    for name, fp32_seconds in (("first", 1.5), ("rerun", 2.7)):  # the wall clock differs between runs
        pretend_seconds(monkeypatch, fast=1.0, fp32=fp32_seconds)
        build_cache(toy_prepared, str(tiny_encoder_dir), "tiny", config, tmp_path / name, progress=False)
    metas = [(tmp_path / name / cache.META_FILE).read_bytes() for name in ("first", "rerun")]
    assert b"torch_int8" in metas[0] and metas[0] == metas[1]  # so DVC sees an unchanged cache
    vectors = [(tmp_path / name / cache.REVIEWS_FILE).read_bytes() for name in ("first", "rerun")]
    assert vectors[0] == vectors[1]  # the Parquet file, which carries the same provenance in its schema


def test_auto_gives_way_from_openvino_int8_to_a_plain_fp32_cache_where_it_is_slower(toy_prepared, tiny_encoder_dir,
                                                                                    tmp_path, monkeypatch):
    monkeypatch.setattr(encode, "cpu_flags", lambda: {"avx2", "avx512_vnni"})
    monkeypatch.setattr(encode.torch.cuda, "is_available", lambda: False)
    pretend_seconds(monkeypatch, fast=2.0, fp32=1.0)
    config = dataclasses.replace(CONFIG, backend="auto", backend_check_sample=5, pooling="mean")
    fell = build_cache(toy_prepared, str(tiny_encoder_dir), "tiny", config, tmp_path / "fell", progress=False)
    assert fell["backend"] == "torch" and "(openvino_int8) fell back (less than 1.1x" in fell["backend_check"]["note"]
    assert "int8_model" not in fell  # nothing of the int8 model is left on the fp32 cache
    build_cache(toy_prepared, str(tiny_encoder_dir), "tiny", dataclasses.replace(config, backend="torch"),
                tmp_path / "fp32", progress=False)
    vectors = [pq.read_table(tmp_path / name / cache.REVIEWS_FILE).column("embedding") for name in ("fell", "fp32")]
    assert vectors[0].equals(vectors[1])


def test_openvino_int8_cache_is_calibrated_on_training_reviews_apart_from_its_check_sample(toy_prepared,
                                                                                          tiny_encoder_dir, tmp_path,
                                                                                          monkeypatch):
    calibrations = []
    original = openvino_int8.OpenVinoInt8.__init__

    def spying(self, model, tokenizer, calibration, max_length):
        calibrations.append(list(calibration))
        original(self, model, tokenizer, calibration, max_length)

    monkeypatch.setattr(openvino_int8.OpenVinoInt8, "__init__", spying)
    config = dataclasses.replace(CONFIG, backend="openvino_int8", backend_check_sample=5, pooling="mean")
    meta = build_cache(toy_prepared, str(tiny_encoder_dir), "tiny", config, tmp_path / "ov", progress=False)
    assert meta["backend"] == "openvino_int8" and meta["backend_check"]["sample"] == 5
    assert meta["backend_check"]["cosine_mean"] > 0.9  # int8 weights and activations, still close to fp32
    training = [r[3] for r in TOY_REVIEWS if r[2] == "train"]
    assert calibrations and calibrations[0] == training[5: 5 + openvino_int8.CALIBRATION_SAMPLE]  # never test text
    int8_model = meta["int8_model"]  # recorded in meta.json, and part of the resume key
    assert int8_model["calibration_sample"] == len(calibrations[0]) and len(int8_model["calibration_fingerprint"]) == 16
    other = {**meta, "int8_model": {**int8_model, "calibration_fingerprint": "0" * 16}}
    assert writer.work_key([meta], 4) != writer.work_key([other], 4)  # shards of two int8 models never mix
    build_cache(toy_prepared, str(tiny_encoder_dir), "tiny", dataclasses.replace(config, backend="torch"),
                tmp_path / "fp32", progress=False)
    vectors = [pq.read_table(tmp_path / name / cache.REVIEWS_FILE).column("embedding").to_pylist()
               for name in ("ov", "fp32")]
    assert cosine_agreement(np.array(vectors[0]), np.array(vectors[1]))["mean"] > 0.9


# ---------------------------------------------------------------------------------------------------------------
# one forward pass, several poolings


def test_one_pass_writes_every_pooling_equal_to_separate_builds(toy_prepared, tiny_encoder_dir, tmp_path,
                                                                monkeypatch):
    forwards = []
    original = encode_pooled

    def counting(encoder, texts, poolings, progress=False):
        forwards.append(len(texts))
        return original(encoder, texts, poolings, progress)

    monkeypatch.setattr("pipeline.embeddings.build.encode_pooled", counting)
    configs = {"pooled": CONFIG, "averaged": dataclasses.replace(CONFIG, pooling="mean")}
    metas = build_caches(toy_prepared, str(tiny_encoder_dir), configs,
                         {"pooled": tmp_path / "pooled", "averaged": tmp_path / "averaged"}, progress=False)
    assert sum(forwards) == 16  # every review encoded once, not once per pooling
    assert metas["averaged"]["pooling"] == "mean" and metas["averaged"]["encoder"] == "averaged"
    for name, config in configs.items():
        build_cache(toy_prepared, str(tiny_encoder_dir), name, config, tmp_path / f"alone_{name}", progress=False)
        assert_same_cache(tmp_path / name, tmp_path / f"alone_{name}")
    with pytest.raises(DataError, match="may differ only in pooling"):
        build_caches(toy_prepared, str(tiny_encoder_dir), {"a": CONFIG, "b": dataclasses.replace(CONFIG, max_length=16,
                     pooling="mean")}, {"a": tmp_path / "a", "b": tmp_path / "b"}, progress=False)


def test_embed_cli_writes_two_caches_from_one_pass_and_refuses_encoders_with_other_weights(
        toy_prepared, tiny_encoder_dir, tmp_path):
    from stages import embed

    app = typer.Typer()
    app.command("embed")(embed.main)
    app.command("info")(embed.cache_info)
    params = tmp_path / "params.yaml"
    params.write_text(f"encoders:\n  a: {{model: {tiny_encoder_dir}}}\n"
                      f"  b: {{model: {tiny_encoder_dir}, pooling: mean}}\n"
                      f"  c: {{model: {tiny_encoder_dir}, finetune: true, pooling: cls}}\n"
                      "embed:\n  max_length: 32\n  batch_size: 4\n  shard_size: 8\n  threads: 1\n")
    base = ["embed", "--prepared", str(toy_prepared), "--encoder-dir", str(tiny_encoder_dir), "--params", str(params)]
    result = CliRunner().invoke(app, base + ["--name", "a", "--out", str(tmp_path / "a"),
                                             "--name", "b", "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert (cache.read_meta(tmp_path / "a")["pooling"] == "pooler"
            and cache.read_meta(tmp_path / "b")["pooling"] == "mean")
    tuned = CliRunner().invoke(app, base + ["--name", "a", "--out", str(tmp_path / "x"),
                                            "--name", "c", "--out", str(tmp_path / "y")])
    assert tuned.exit_code == 2 and "cannot share one pass" in tuned.output and not (tmp_path / "x").exists()
    uneven = CliRunner().invoke(app, base + ["--name", "a", "--name", "b", "--out", str(tmp_path / "x")])
    assert uneven.exit_code == 2 and "one output per name" in uneven.output


# ---------------------------------------------------------------------------------------------------------------
# engines


def test_a_local_embed_killed_with_sigkill_resumes_to_the_same_bytes(toy_prepared, tiny_encoder_dir, tmp_path):
    out = tmp_path / "killed"
    embed_then_kill(toy_prepared, tiny_encoder_dir, out, park=1)
    assert not out.exists()
    assert len(list(writer.default_partial_dir(out).rglob("shard-*.parquet"))) == 2
    build_cache(toy_prepared, str(tiny_encoder_dir), "tiny", CONFIG, out, progress=False)
    build_cache(toy_prepared, str(tiny_encoder_dir), "tiny", CONFIG, tmp_path / "straight", progress=False)
    assert_same_cache(out, tmp_path / "straight")


def test_ray_engine_without_ray_installed_names_the_extra(toy_prepared, tiny_encoder_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when the extra is not installed
    with pytest.raises(DataError, match=r"pip install '\.\[ray\]'"):
        build_cache(toy_prepared, str(tiny_encoder_dir), "tiny", ray_config(), tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()


@pytest.mark.slow  # the default run checks the same through the resumed run below
def test_ray_engine_writes_the_same_cache_as_the_local_engine(local_ray, toy_prepared, tiny_encoder_dir,
                                                                    tmp_path):
    local = build_cache(toy_prepared, str(tiny_encoder_dir), "tiny", CONFIG, tmp_path / "local", progress=False)
    distributed = build_cache(toy_prepared, str(tiny_encoder_dir), "tiny", ray_config(), tmp_path / "ray",
                              progress=False)
    assert distributed == local
    assert_same_cache(tmp_path / "ray", tmp_path / "local")  # same order, same vectors (fp32 is deterministic)
    _, a = cache.load_review_embeddings(tmp_path / "ray")
    _, b = cache.load_review_embeddings(tmp_path / "local")
    assert cosine_agreement(a, b)["min"] >= 0.9999


@pytest.mark.slow  # a second Ray driver in a child process: minutes to start on a loaded 2-core machine
def test_ray_driver_killed_with_sigkill_resumes_to_the_local_bytes(local_ray, toy_prepared, tiny_encoder_dir,
                                                                   tmp_path):
    build_cache(toy_prepared, str(tiny_encoder_dir), "tiny", CONFIG, tmp_path / "local", progress=False)
    out = tmp_path / "killed"
    embed_then_kill(toy_prepared, tiny_encoder_dir, out, park=0, engine="ray", address=local_ray, timeout=600)
    assert not out.exists()
    finished = list(writer.default_partial_dir(out).rglob("shard-*.parquet"))
    assert finished, "the killed run left no finished shard"
    build_cache(toy_prepared, str(tiny_encoder_dir), "tiny", ray_config(), out, progress=False)
    assert_same_cache(out, tmp_path / "local")


def test_ray_actors_run_the_int8_model_the_local_engine_runs(local_ray, toy_prepared, tiny_encoder_dir, tmp_path):
    int8 = dataclasses.replace(CONFIG, backend="openvino_int8", backend_check_sample=5)
    local = build_cache(toy_prepared, str(tiny_encoder_dir), "tiny", int8, tmp_path / "local", progress=False)
    distributed = build_cache(toy_prepared, str(tiny_encoder_dir), "tiny",
                              dataclasses.replace(ray_config(), backend="openvino_int8", backend_check_sample=5),
                              tmp_path / "ray", progress=False)
    assert distributed["backend"] == local["backend"] == "openvino_int8"
    _, a = cache.load_review_embeddings(tmp_path / "ray")
    _, b = cache.load_review_embeddings(tmp_path / "local")
    assert cosine_agreement(a, b)["min"] >= 0.9999  # each actor calibrates on the same training reviews


def test_ray_engine_stopped_after_a_shard_resumes_to_the_local_cache(local_ray, toy_prepared, tiny_encoder_dir,
                                                                     tmp_path):
    def stop(k):
        raise KeyboardInterrupt

    out = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        build_cache(toy_prepared, str(tiny_encoder_dir), "tiny", ray_config(), out, on_shard=stop, progress=False)
    assert not out.exists()
    assert list(writer.default_partial_dir(out).rglob("shard-*.parquet")), "the stopped run left no finished shard"
    resumed = build_cache(toy_prepared, str(tiny_encoder_dir), "tiny", ray_config(), out, progress=False)
    local = build_cache(toy_prepared, str(tiny_encoder_dir), "tiny", CONFIG, tmp_path / "local", progress=False)
    assert resumed == local
    assert_same_cache(out, tmp_path / "local")  # same review order, same vectors (fp32 is deterministic)
    _, a = cache.load_review_embeddings(out)
    _, b = cache.load_review_embeddings(tmp_path / "local")
    assert cosine_agreement(a, b)["min"] >= 0.9999


def test_pass_lists_name_every_encoder_once_and_pair_only_shared_weights(tmp_path):
    from pipeline.config import load_params

    def params(passes: str) -> None:
        path = tmp_path / "params.yaml"
        path.write_text("encoders:\n  a: {model: m}\n  b: {model: m, pooling: mean}\n  t: {model: m, finetune: true}\n"
                        f"embed:\n{passes}")
        return load_params(path)

    ok = params("  shared_passes: {a: b}\n  single_passes: [t]\n")
    assert ok.embed.shared_passes == {"a": "b"}
    with pytest.raises(ConfigError, match=r"embed.single_passes: encoder\(s\) \['t'\] are in no pass"):
        params("  shared_passes: {a: b}\n")
    with pytest.raises(ConfigError, match="embed.shared_passes.a: a and t share a pass only with the same model"):
        params("  shared_passes: {a: t}\n  single_passes: [b]\n")
    with pytest.raises(ConfigError, match=r"named in more than one pass"):
        params("  shared_passes: {a: b}\n  single_passes: [a, t]\n")
