"""Throughput benchmark of the `embed` encode path against a naive baseline, measured in the same run.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/embed_throughput.py --n 600 --max-length 256

On the bundled real sample (Amazon 2014 Digital Music, first 6,907 reviews), for two text sets:
    reviews    summary + reviewText (long: ~200 words on average, mostly truncated at max_length)
    summaries  the summary line only (short: padding dominates the naive baseline)
it measures reviews/s and peak RSS growth of
    naive       plain `BertModel` fp32, fixed batches in file order, every batch padded to max_length
    ours_fp32   pipeline.text.encode: length-sorted batches, dynamic padding, inference_mode
    ours_bf16   the same with backend "torch_bf16" (autocast bfloat16 on CPU)
    ours_int8   the same with backend "torch_int8" (dynamic int8 attention projections)
    ours_openvino_int8  the same with backend "openvino_int8" (OpenVINO, int8 weights and activations, scales set
                by CALIBRATION_SAMPLE other reviews of the sample; needs the `openvino` extra, skipped without it)
    static      the encoder distilled into token vectors (pipeline/text/static.py, model2vec): the mean of a
                review's token vectors, no transformer pass (distilled once into --work; its vectors live in another
                space, so its cosine to fp32 does not apply: what it costs in quality is in quality.md)
and reports which is the default path (`embed.backend: auto` picks bf16 only where the CPU runs it natively:
AVX512-BF16 or AMX; int8 on CPUs with native int8 dot products, VNNI or AMX-INT8, where its cosine to fp32 holds and
it is at least 1.1x as fast), with its speed-up against naive (target >= 2x on long reviews at cosine >= 0.99),
plus achieved GFLOP/s (linear layers + attention on the tokens actually run) against a float32 (and bfloat16)
matmul measured here, and cosine agreement of each path with the naive fp32 vectors. Not a test: results go to
benchmarks/results/embed_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import PeakRSS, write_report  # noqa: E402
from pipeline.config import PACKAGED_ENCODER  # noqa: E402
from pipeline.text.encode import choose_backend, cosine_agreement, encode_texts, load_encoder  # noqa: E402
from pipeline.text import openvino_int8  # noqa: E402
from pipeline.text.encoders import resolve_encoder  # noqa: E402
from pipeline.text.openvino_int8 import CALIBRATION_SAMPLE  # noqa: E402
from pipeline.text.static import distill_static, is_static, load_static  # noqa: E402

SAMPLE = ROOT / "data/sample/reviews_Digital_Music_5.first6907.json.gz"


def read_sample(path: Path, n: int, seed: int, calibration: int = 0) -> dict[str, list[str]]:
    """{"reviews": ..., "summaries": ...} of a random subset of n reviews, and "calibration": `calibration` other
    reviews (summary + text) that set openvino_int8's scales."""
    records = [json.loads(line) for line in gzip.open(path, "rt")]
    order = np.random.default_rng(seed).permutation(len(records))
    picked, others = [records[i] for i in order[:n]], [records[i] for i in order[n: n + calibration]]

    def review(r: dict) -> str:
        return f"{r.get('summary', '')}. {r.get('reviewText', '')}".strip()

    return {
        "reviews": [review(r) for r in picked],
        "summaries": [r.get("summary", "") or "" for r in picked],
        "calibration": [review(r) for r in others],
    }


def flops(config, token_counts: list[int]) -> float:
    """FLOPs of the encoder layers (+ pooler) for sequences of the given lengths (2 per multiply-add)."""
    d, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    total = 0.0
    for s in token_counts:
        linear = 2 * s * (4 * d * d + 2 * d * inter)  # Q, K, V, O and the two FFN matrices
        attention = 2 * 2 * s * s * d  # scores and weighted sum
        total += layers * (linear + attention) + 2 * d * d
    return total


@torch.inference_mode()
def naive_encode(encoder, texts: list[str], batch_size: int, max_length: int) -> tuple[np.ndarray, list[int]]:
    """Baseline: file order, every batch padded to max_length, fp32, pooler output."""
    out, lengths = [], []
    for start in range(0, len(texts), batch_size):
        batch = encoder.tokenizer(texts[start : start + batch_size], padding="max_length", truncation=True,
                                  max_length=max_length, return_tensors="pt")
        lengths += [batch["input_ids"].shape[1]] * len(batch["input_ids"])
        out.append(encoder.model(**batch).pooler_output.numpy())
    return np.concatenate(out), lengths


def timed(fn):
    with PeakRSS(interval=0.005) as mem:
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
    return result, seconds, mem.growth_mb


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 8) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def run(args) -> dict:
    load_at_start = os.getloadavg()[0]
    torch.set_num_threads(args.threads)
    texts = read_sample(SAMPLE, args.n, args.seed, calibration=CALIBRATION_SAMPLE)
    calibration = texts.pop("calibration")
    path = resolve_encoder(PACKAGED_ENCODER)
    fp32 = load_encoder(path, pooling="pooler", max_length=args.max_length, batch_size=args.batch_size)
    bf16 = load_encoder(path, pooling="pooler", max_length=args.max_length, batch_size=args.batch_size,
                        backend="torch_bf16")
    int8 = load_encoder(path, pooling="pooler", max_length=args.max_length, batch_size=args.batch_size,
                        backend="torch_int8")
    openvino = load_encoder(path, pooling="pooler", max_length=args.max_length, batch_size=args.batch_size,
                            backend="openvino_int8", calibration=calibration) if openvino_int8.available() else None
    # bf16 is emulated (and many times slower than fp32) on CPUs without native bf16: time it only where it is
    # the default path or when asked
    run_bf16 = args.always_bf16 or choose_backend("auto") == "torch_bf16"
    ceiling = {"fp32_matmul_gflops": matmul_gflops(torch.float32), "bf16_matmul_gflops": matmul_gflops(torch.bfloat16)}
    default_backend = load_encoder(path, pooling="pooler", max_length=8, backend="auto").backend
    default_path = {"torch": "ours_fp32", "torch_bf16": "ours_bf16", "torch_int8": "ours_int8",
                    "openvino_int8": "ours_openvino_int8"}[default_backend]
    static_dir = Path(args.work) / "minilm_static"
    if not is_static(static_dir):
        distill_static(path, static_dir)
    static = load_static(static_dir, max_length=args.max_length)
    results = {}
    for name, batch in texts.items():
        real = [len(ids) for ids in fp32.tokenizer(batch, truncation=True, max_length=args.max_length)["input_ids"]]
        encode_texts(fp32, batch[: args.batch_size])  # warm-up
        (naive_vecs, naive_lengths), t_naive, m_naive = timed(
            lambda: naive_encode(fp32, batch, args.batch_size, args.max_length))
        ours, t_ours, m_ours = timed(lambda: encode_texts(fp32, batch))
        ours_bf16, t_bf16, m_bf16 = timed(lambda: encode_texts(bf16, batch)) if run_bf16 else (ours, float("nan"), 0.0)
        encode_texts(int8, batch[: args.batch_size])  # warm-up (and the quantised copy made)
        ours_int8, t_int8, m_int8 = timed(lambda: encode_texts(int8, batch))
        if openvino is not None:
            encode_texts(openvino, batch[: args.batch_size])  # warm-up (and the int8 model made)
            ours_ov, t_ov, m_ov = timed(lambda: encode_texts(openvino, batch))
        static.encode(batch[: args.batch_size])  # warm-up
        _, t_static, m_static = timed(lambda: static.encode(batch))
        useful = flops(fp32.model.config, real)
        sorted_real = np.sort(real)[::-1]
        # dynamic padding runs each batch at its longest member's length
        executed_ours = flops(fp32.model.config, [int(sorted_real[i - i % args.batch_size]) for i in range(len(real))])
        executed_naive = flops(fp32.model.config, naive_lengths)
        row = {
            "n": len(batch),
            "mean_tokens": float(np.mean(real)),
            "truncated_share": float(np.mean(np.array(real) >= args.max_length)),
            "naive": {"seconds": t_naive, "reviews_per_s": len(batch) / t_naive, "peak_rss_mb": m_naive,
                      "gflops_executed": executed_naive / t_naive / 1e9, "gflops_useful": useful / t_naive / 1e9},
            "ours_fp32": {"seconds": t_ours, "reviews_per_s": len(batch) / t_ours, "peak_rss_mb": m_ours,
                          "gflops_executed": executed_ours / t_ours / 1e9, "gflops_useful": useful / t_ours / 1e9,
                          "cosine_vs_naive": cosine_agreement(ours, naive_vecs)},
            "ours_bf16": None if not run_bf16 else {"seconds": t_bf16, "reviews_per_s": len(batch) / t_bf16,
                          "peak_rss_mb": m_bf16,
                          "gflops_executed": executed_ours / t_bf16 / 1e9, "gflops_useful": useful / t_bf16 / 1e9,
                          "cosine_vs_fp32": cosine_agreement(ours_bf16, ours)},
            "ours_int8": {"seconds": t_int8, "reviews_per_s": len(batch) / t_int8, "peak_rss_mb": m_int8,
                          "gflops_executed": executed_ours / t_int8 / 1e9, "gflops_useful": useful / t_int8 / 1e9,
                          "cosine_vs_fp32": cosine_agreement(ours_int8, ours)},
            "ours_openvino_int8": None if openvino is None else {
                "seconds": t_ov, "reviews_per_s": len(batch) / t_ov, "peak_rss_mb": m_ov,
                "gflops_executed": executed_ours / t_ov / 1e9, "gflops_useful": useful / t_ov / 1e9,
                "cosine_vs_fp32": cosine_agreement(ours_ov, ours)},
            "static": {"seconds": t_static, "reviews_per_s": len(batch) / t_static, "peak_rss_mb": m_static},
        }
        row["static_over_fp32"] = t_ours / t_static
        row["int8_over_fp32"] = t_ours / t_int8
        row["speedup_fp32"] = t_naive / t_ours
        row["speedup_bf16"] = t_naive / t_bf16 if run_bf16 else None
        row["speedup_int8"] = t_naive / t_int8
        if openvino is not None:
            row["openvino_int8_over_fp32"] = t_ours / t_ov
            row["speedup_openvino_int8"] = t_naive / t_ov
        row["speedup_static"] = t_naive / t_static
        row["speedup_default"] = row[default_path.replace("ours_", "speedup_")]
        results[name] = row
        print(name, json.dumps({k: row.get(k) for k in ("speedup_fp32", "speedup_bf16", "speedup_int8",
                                                          "speedup_openvino_int8", "speedup_static")}), flush=True)
    return {
        "command": "HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/embed_throughput.py " + " ".join(sys.argv[1:]),
        "sample": f"{SAMPLE.relative_to(ROOT)} (random subset of {args.n} reviews, seed {args.seed})",
        "encoder": PACKAGED_ENCODER,
        "max_length": args.max_length,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg()[0]},
        "gpu": "none lent to this run; CPU only",
        "default_backend": default_backend,
        "default_path": default_path,
        **ceiling,
        "results": results,
    }


def markdown(report: dict) -> str:
    lines = [
        "# embed throughput", "",
        f"Command: `{report['command']}`", "",
        f"Date: {report['date']}; {report['machine']['cores']} cores ({report['machine']['torch_cpu_capability']}), "
        f"load average {report['machine']['load_average_at_start']:.1f} at start, "
        f"{report['machine'].get('load_average_at_end', float('nan')):.1f} at the end (a shared machine); "
        f"GPU: {report['gpu']}.", "",
        f"Default path (`embed.backend: auto`) on this machine: backend {report['default_backend']} = "
        f"{report['default_path']}; speed-up on long reviews "
        f"{report['results']['reviews']['speedup_default']:.2f}x against the naive loop (target >= 2x at cosine "
        f">= 0.99: {'met' if report['results']['reviews']['speedup_default'] >= 2 else 'missed'}).", "",
        f"Sample: {report['sample']}; encoder {report['encoder']}; max_length {report['max_length']}; "
        f"batch {report['batch_size']}; {report['threads']} torch threads; torch {report['machine']['torch']}.", "",
        f"Matmul ceiling (2048^3, measured in the same run): fp32 {report['fp32_matmul_gflops']:.0f} GFLOP/s, "
        f"bf16 {report['bf16_matmul_gflops']:.0f} GFLOP/s.", "",
        "| texts | mean tokens | truncated | path | reviews/s | speed-up | peak RSS MB | GFLOP/s executed | "
        "GFLOP/s useful | cosine |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report["results"].items():
        for path in ("naive", "ours_fp32", "ours_bf16", "ours_int8", "ours_openvino_int8", "static"):
            r = row.get(path)
            if r is None and path == "ours_openvino_int8":
                lines.append(f"| {name} | {row['mean_tokens']:.0f} | {row['truncated_share']:.0%} | {path} | "
                             "not run: OpenVINO is not installed (the openvino extra) | | | | | |")
                continue
            if r is None:
                lines.append(f"| {name} | {row['mean_tokens']:.0f} | {row['truncated_share']:.0%} | {path} | "
                             "not run: no native bf16 on this CPU (emulated bf16 is slower than fp32) | | | | | |")
                continue
            speed = {"naive": 1.0, "ours_fp32": row["speedup_fp32"], "ours_bf16": row["speedup_bf16"],
                     "ours_int8": row.get("speedup_int8"), "ours_openvino_int8": row.get("speedup_openvino_int8"),
                     "static": row.get("speedup_static")}[path]
            cos = r.get("cosine_vs_naive") or r.get("cosine_vs_fp32")
            cos_text = f"{cos['mean']:.5f} (min {cos['min']:.4f})" if cos else "reference"
            if path == "static":
                lines.append(f"| {name} | {row['mean_tokens']:.0f} | {row['truncated_share']:.0%} | {path} | "
                             f"{r['reviews_per_s']:.1f} | {speed:.2f}x | {r['peak_rss_mb']:.0f} | no transformer | "
                             "no transformer | another vector space (quality.md) |")
                continue
            lines.append(f"| {name} | {row['mean_tokens']:.0f} | {row['truncated_share']:.0%} | {path} | "
                         f"{r['reviews_per_s']:.1f} | {speed:.2f}x | {r['peak_rss_mb']:.0f} | "
                         f"{r['gflops_executed']:.0f} | {r['gflops_useful']:.0f} | {cos_text} |")
    lines += ["", "GFLOP/s counts the encoder's linear layers and attention (2 FLOPs per multiply-add); "
              "'executed' includes padding tokens, 'useful' counts real tokens only. Cosine: ours_fp32 against the "
              "naive fp32 vectors, the other paths against ours_fp32. Peak RSS is growth over the level before "
              "each path.", ""]
    int8 = [f"{name} {row['int8_over_fp32']:.2f}x" for name, row in report["results"].items()
            if "int8_over_fp32" in row]
    if int8:
        lines += [f"int8 against fp32 (ours_int8 / ours_fp32 reviews/s, one run): {', '.join(int8)}.", ""]
    ov = [f"{name} {row['openvino_int8_over_fp32']:.2f}x" for name, row in report["results"].items()
          if "openvino_int8_over_fp32" in row]
    if ov:
        lines += [f"OpenVINO int8 against fp32 (ours_openvino_int8 / ours_fp32 reviews/s, one run): {', '.join(ov)}.",
                  ""]
    static = [f"{name} {row['static_over_fp32']:.0f}x" for name, row in report["results"].items()
              if "static_over_fp32" in row]
    if static:
        lines += [f"static against fp32 (static / ours_fp32 reviews/s, one run): {', '.join(static)}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=600, help="reviews in the random subset")
    parser.add_argument("--work", default=str(ROOT / "build" / "embed_throughput"),
                        help="where the static encoder is distilled (once)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--always-bf16", action="store_true", help="time bf16 even where the CPU only emulates it")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results")
    args = parser.parse_args()
    write_report(args.out, "embed_throughput", run(args), markdown)


if __name__ == "__main__":
    main()
