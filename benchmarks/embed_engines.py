"""The Ray engine against the local engine on the same reviews, and Ray's peak memory at 1x and 4x the input.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/embed_engines.py --reviews 20000

The bundled sample is prepared with params.yaml's `prepare` section and its reviews repeated with fresh ids up to
`--reviews`. Three cache builds, each by `build_cache` exactly as `bertrs embed` runs it (params.yaml's `embed`
section, encoder minilm):
    local        embed.engine local, torch on all cores
    ray          embed.engine ray on a local 2-CPU Ray (2 actors x 1 CPU), same reviews (target: within 1.3x)
    ray_quarter  the same on the first quarter of the reviews (peak memory at 4x input <= 1.3x that at 1x)
Wall times exclude starting Ray (reported apart); peak RSS sums this process and all its descendants (the Ray
actors, raylet and GCS included). The two engines' caches are compared vector by vector. Not a test: results go to
benchmarks/results/embed_engines.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import PeakRSS, repeat_reviews  # noqa: E402
from pipeline.config import RayEngineConfig, load_params  # noqa: E402
from pipeline.data.prepare import prepare_dataset  # noqa: E402
from pipeline.embeddings.build import build_cache  # noqa: E402
from pipeline.embeddings.cache import load_review_embeddings  # noqa: E402
from pipeline.text.encode import cosine_agreement  # noqa: E402

RESULTS = ROOT / "benchmarks/results"


def timed_build(prepared: Path, model: str, config, out: Path) -> dict:
    with PeakRSS() as rss:
        start = time.perf_counter()
        meta = build_cache(prepared, model, "minilm", config, out, progress=False)
        seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 1), "reviews_per_s": round(meta["n_reviews"] / seconds, 1),
            "peak_rss_mb": round(rss.peak_mb, 1), "backend": meta["backend"], "n_reviews": meta["n_reviews"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=20000)
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--out", type=Path, default=RESULTS / "embed_engines")
    args = parser.parse_args()

    import ray

    params = load_params(args.params)
    model = params.encoders["minilm"].model
    local = params.embed_for("minilm")
    distributed = dataclasses.replace(local, engine="ray", threads=None,
                                      ray=RayEngineConfig(address=None, num_actors=2, num_cpus_per_actor=1.0))
    work = Path(tempfile.mkdtemp(prefix="embed_engines-"))
    rows = {}
    try:
        for name, n in (("full", args.reviews), ("quarter", args.reviews // 4)):
            prepare_dataset(params.prepare, [ROOT / "data/sample"], work / name)
            repeat_reviews(work / name, n)
        texts = pq.read_table(work / "full/reviews.parquet", columns=["text"]).column("text").to_pylist()
        words = float(np.mean([len(t.split()) for t in texts]))
        del texts
        rows["local"] = timed_build(work / "full", model, local, work / "local")
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}})
        ray_start = time.perf_counter() - start
        rows["ray"] = timed_build(work / "full", model, distributed, work / "ray")
        rows["ray_quarter"] = timed_build(work / "quarter", model, distributed, work / "ray_quarter")
        ray.shutdown()
        _, a = load_review_embeddings(work / "local")
        _, b = load_review_embeddings(work / "ray")
        agreement = cosine_agreement(a, b)
        identical = bool(np.array_equal(a, b))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ratio_time = rows["ray"]["seconds"] / rows["local"]["seconds"]
    ratio_rss = rows["ray"]["peak_rss_mb"] / rows["ray_quarter"]["peak_rss_mb"]
    result = {
        "command": f"HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/embed_engines.py --reviews {args.reviews}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "ray": ray.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "load_average_at_start": os.getloadavg()[0]},
        "gpu": "none lent to this run; CPU only",
        "reviews": args.reviews,
        "mean_words_per_review": round(words, 1),
        "ray_start_seconds": round(ray_start, 1),
        "runs": rows,
        "ray_over_local_time": round(ratio_time, 3),
        "ray_rss_4x_over_1x": round(ratio_rss, 3),
        "cosine_ray_vs_local": agreement,
        "vectors_identical": identical,
    }
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# embed engines: Ray against local", "",
        f"Command: `{result['command']}`", "",
        f"Date: {result['date']}. Machine: {result['machine']['cpus']} CPUs "
        f"({result['machine']['torch_cpu_capability']}), load average {result['machine']['load_average_at_start']:.1f}"
        f" at the end, torch {torch.__version__}, ray {ray.__version__}. "
        f"GPU: {result['gpu']}.", "",
        f"{args.reviews} reviews (the bundled sample repeated with fresh ids; {words:.0f} words on average), encoder "
        f"minilm, params.yaml's embed section (max_length {local.max_length}, backend {local.backend}).", "",
        "| run | reviews | backend | wall time s | reviews/s | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        md.append(f"| {name} | {row['n_reviews']} | {row['backend']} | {row['seconds']} | {row['reviews_per_s']} | "
                  f"{row['peak_rss_mb']} |")
    md += [
        "",
        f"- Ray / local wall time: {ratio_time:.2f}x (target <= 1.3x: {'met' if ratio_time <= 1.3 else 'missed'}); "
        f"starting the local Ray took {ray_start:.1f} s more, not counted.",
        f"- Ray peak RSS at 4x the input / at 1x: {ratio_rss:.2f}x (target <= 1.3x: "
        f"{'met' if ratio_rss <= 1.3 else 'missed'}).",
        f"- Ray vectors against local: cosine mean {agreement['mean']:.6f}, min {agreement['min']:.6f}; "
        f"bit-identical: {identical}.", "",
    ]
    args.out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
