"""Stage one at the paper's size: encode 83.6k reviews of realistic length with the default `embed` path.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/stage_one_scale.py --reviews 83599

The bundled sample (Amazon 2014 Digital Music, first 6,907 reviews) is prepared with params.yaml's `prepare`
section, then its reviews are repeated with fresh review ids until there are `--reviews` of them (the paper's set
has 83,599). The same users and items recur, so profiles and the index are built at the sample's size; encoding,
the part that grows with the review count, runs at full size. The cache is built by `build_cache`, exactly as
`bertrs embed` builds it, with params.yaml's `embed` section (backend auto). Records wall time, reviews/s, peak
RSS of the process, the backend chosen and its cosine against fp32. Not a test: results go to
benchmarks/results/stage_one_scale.{json,md}.
"""

from __future__ import annotations

import argparse
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
from pipeline.config import load_params  # noqa: E402
from pipeline.data.prepare import prepare_dataset  # noqa: E402
from pipeline.embeddings.build import build_cache  # noqa: E402

RESULTS = ROOT / "benchmarks/results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=83599)
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--encoder", default="minilm", help="a key of params `encoders`")
    parser.add_argument("--out", type=Path, default=RESULTS / "stage_one_scale")
    args = parser.parse_args()

    params = load_params(args.params)
    config = params.embed_for(args.encoder)
    work = Path(tempfile.mkdtemp(prefix="stage_one_scale-"))
    try:
        prepare_dataset(params.prepare, [ROOT / "data/sample"], work / "prepared")
        repeat_reviews(work / "prepared", args.reviews)
        lengths = pq.read_table(work / "prepared/reviews.parquet", columns=["text"]).column("text").to_pylist()
        words = float(np.mean([len(t.split()) for t in lengths]))
        del lengths
        with PeakRSS() as rss:
            start = time.perf_counter()
            meta = build_cache(work / "prepared", params.encoders[args.encoder].model, args.encoder, config,
                               work / "cache")
            seconds = time.perf_counter() - start
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "command": f"HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/stage_one_scale.py --reviews {args.reviews}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_at_end": os.getloadavg()[0],
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch": torch.__version__,
                    "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "gpu": "none lent to this run; CPU only",
        "encoder": args.encoder,
        "reviews": args.reviews,
        "share_of_paper_size": round(args.reviews / 83599, 3),
        "extrapolated_paper_size_minutes": round(83599 / (args.reviews / seconds) / 60, 1),
        "mean_words_per_review": round(words, 1),
        "embed": {k: getattr(config, k) for k in ("pooling", "max_length", "batch_size", "shard_size", "backend")},
        "backend_chosen": meta.get("backend"),
        "backend_cosine_vs_fp32": meta.get("backend_check"),
        "seconds": round(seconds, 1),
        "reviews_per_s": round(args.reviews / seconds, 1),
        "peak_rss_mb": round(rss.peak_mb, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# stage one at the paper's size",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Date: {result['date']}. Machine: {result['machine']['processor']}, {result['machine']['cpus']} CPUs "
        f"(load average {result['load_average_at_end']:.1f} at the end), torch {result['machine']['torch']} "
        f"({result['machine']['torch_cpu_capability']}). GPU: {result['gpu']}.",
        "",
        f"{args.reviews} reviews ({args.reviews / 83599:.0%} of the paper's 83,599; the bundled sample repeated with "
        f"fresh ids; {words:.0f} words on average), "
        f"encoder {args.encoder}, embed settings {result['embed']}.",
        "",
        "| reviews | backend chosen | cosine vs fp32 | wall time | reviews/s | peak RSS MB |",
        "|---|---|---|---|---|---|",
        f"| {args.reviews} | {result['backend_chosen']} | {result['backend_cosine_vs_fp32']} | "
        f"{seconds / 60:.1f} min | {result['reviews_per_s']} | {result['peak_rss_mb']} |",
        "",
        f"At this rate the paper's 83,599 reviews take {result['extrapolated_paper_size_minutes']} min "
        f"({'measured' if args.reviews >= 83599 else 'extrapolated linearly from this run, not measured'}).",
        "",
    ]
    args.out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
