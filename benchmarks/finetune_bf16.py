"""Fine-tuning in bf16 autocast against fp32: held-out MLM loss / NSP accuracy curves and wall time, same run.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/finetune_bf16.py            # the main job's settings
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/finetune_bf16.py --steps 20 --every 5 --max-length 64 \
        --batch-size 8 --time-steps 4      # a short run: curves on a lighter setting, main-job s/step timed apart

Prepares the bundled sample exactly as `bertrs prepare` does (params.yaml `prepare`), then fine-tunes the main
job's fine-tuned encoder (the first `encoders.*` with finetune: true, params.yaml `finetune`) twice, with
`finetune.precision` fp32 and bf16, from the same seed. Every `--every` steps a callback measures held-out MLM
loss and NSP accuracy (fp32 forward, fixed masks); its time is excluded from the training time. The curves
decide whether bf16 may be the default where the hardware runs it natively (see FinetuneConfig.precision): the
gap must lie within the step-to-step noise of the fp32 curve. Not a test: results go to
benchmarks/results/finetune_bf16.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import load_params  # noqa: E402
from pipeline.data.prepare import prepare_dataset  # noqa: E402
from pipeline.data.prepared import load_reviews  # noqa: E402
from pipeline.text import finetune as ft  # noqa: E402
from pipeline.text.encoders import resolve_encoder  # noqa: E402

RESULTS = ROOT / "benchmarks/results"


def curve_callback(eval_ds, collator, every: int, batch_size: int):
    from transformers import TrainerCallback

    class Curve(TrainerCallback):
        points: list = []
        eval_seconds = 0.0

        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step % every == 0:
                start = time.perf_counter()
                point = ft.evaluate_pretraining(model, eval_ds, collator, batch_size)
                self.eval_seconds += time.perf_counter() - start
                self.points.append({"step": state.global_step, "mlm_loss": point["mlm_loss"],
                                    "nsp_accuracy": point["nsp_accuracy"]})
                print(f"  step {state.global_step}: {self.points[-1]}", flush=True)

    return Curve()


def run(precision: str, reviews, base: str, config, work: Path, every: int) -> dict:
    config = dataclasses.replace(config, precision=precision)
    _, tokenizer, _ = ft.load_pretraining_model(resolve_encoder(base), config.seed)
    _, eval_ds = ft.nsp_datasets(reviews, tokenizer, config)
    curve = curve_callback(eval_ds, ft.make_collator(tokenizer, config, seed=config.seed), every,
                           max(config.batch_size, 32))
    out = work / f"encoder-{precision}"
    start = time.perf_counter()
    metrics = ft.finetune_encoder(reviews, base, out, config, work_dir=work / f"work-{precision}",
                                  callbacks=[curve])
    total = time.perf_counter() - start
    return {"precision": precision, "applied": metrics["precision"], "steps": metrics["steps"],
            "train_pairs": metrics["train_pairs"],
            "seconds_total": round(total, 1), "seconds_curve_evals": round(curve.eval_seconds, 1),
            "seconds_without_curve": round(total - curve.eval_seconds, 1),  # load and save included
            "before": metrics["before"], "after": metrics["after"], "train_loss": metrics["train_loss"],
            "curve": curve.points}


def compare(fp32: dict, bf16: dict) -> dict:
    a = {p["step"]: p for p in fp32["curve"]}
    b = {p["step"]: p for p in bf16["curve"]}
    steps = sorted(set(a) & set(b))
    mlm_gap = [abs(a[s]["mlm_loss"] - b[s]["mlm_loss"]) for s in steps]
    nsp_gap = [abs(a[s]["nsp_accuracy"] - b[s]["nsp_accuracy"]) for s in steps]
    # noise: the fp32 curve's own step-to-step wobble once it has settled (second half of the points)
    half = [a[s]["mlm_loss"] for s in steps[len(steps) // 2:]]
    noise = float(np.std(np.diff(half))) if len(half) > 2 else float("nan")
    n_eval = fp32["after"]["pairs"]
    nsp_noise = float(np.sqrt(0.25 / max(n_eval, 1)))  # binomial std of an accuracy near 0.5 on n pairs
    return {"steps": steps, "max_mlm_loss_gap": max(mlm_gap, default=float("nan")),
            "max_nsp_accuracy_gap": max(nsp_gap, default=float("nan")), "mlm_loss_noise": noise,
            "nsp_accuracy_noise": nsp_noise,
            "within_noise": bool(mlm_gap and max(mlm_gap) <= max(2 * noise, 0.02) and max(nsp_gap) <= 2 * nsp_noise),
            "bf16_time_ratio": bf16["seconds_without_curve"] / fp32["seconds_without_curve"]}


def markdown(result: dict) -> str:
    lines = ["# Fine-tuning: bf16 autocast against fp32", "",
             f"Command: `{result['command']}`", f"Machine: {result['machine']}; date {result['date']}", "",
             f"Encoder {result['encoder']} ({result['base']}), {result['config']['max_steps']} steps, batch "
             f"{result['config']['batch_size']}, max_length {result['config']['max_length']}, "
             f"{result['train_pairs']} training pairs, {result['eval_pairs']} held-out pairs.", "",
             "| precision | training s (curve evals excluded) | before MLM loss | after MLM loss | after NSP acc |",
             "|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['precision']} | {r['seconds_without_curve']} | {r['before']['mlm_loss']:.4f} | "
                     f"{r['after']['mlm_loss']:.4f} | {r['after']['nsp_accuracy']:.3f} |")
    lines += ["", "Held-out curve (MLM loss / NSP accuracy):", "", "| step | fp32 | bf16 |", "|---|---|---|"]
    curves = {r["precision"]: {p["step"]: p for p in r["curve"]} for r in result["runs"]}
    for step in result["comparison"]["steps"]:
        cells = [f"{curves[p][step]['mlm_loss']:.4f} / {curves[p][step]['nsp_accuracy']:.3f}" for p in ("fp32", "bf16")]
        lines.append(f"| {step} | {cells[0]} | {cells[1]} |")
    c = result["comparison"]
    lines += ["", f"Max MLM-loss gap {c['max_mlm_loss_gap']:.4f} (fp32 step-to-step noise {c['mlm_loss_noise']:.4f}); "
              f"max NSP-accuracy gap {c['max_nsp_accuracy_gap']:.3f} (binomial noise {c['nsp_accuracy_noise']:.3f}); "
              f"within noise: {c['within_noise']}. bf16/fp32 time: {c['bf16_time_ratio']:.2f}x.", "",
              result["note"], ""]
    if result["main_job_timing"]:
        lines += ["Main job's settings (params.yaml `finetune`), timed over a few steps:", "",
                  "| precision | steps timed | s/step | estimate for max_steps |", "|---|---|---|---|"]
        lines += [f"| {t['precision']} | {t['steps']} | {t['seconds_per_step']} | {t['main_job_seconds_estimate']} |"
                  for t in result["main_job_timing"]]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--steps", type=int, default=None, help="override finetune.max_steps (default: params)")
    parser.add_argument("--every", type=int, default=25, help="curve point every N steps")
    parser.add_argument("--max-length", type=int, default=None, help="override finetune.max_length for the curves")
    parser.add_argument("--batch-size", type=int, default=None, help="override finetune.batch_size for the curves")
    parser.add_argument("--time-steps", type=int, default=0,
                        help="also time this many steps at the unchanged params.yaml settings (0: the curve runs are "
                             "the main job's settings already)")
    parser.add_argument("--work", default=str(ROOT / "build/finetune_bf16"))
    args = parser.parse_args()

    params = load_params(args.params)
    work = Path(args.work)
    prepared = work / "prepared"
    if not (prepared / "stats.json").is_file():
        config = dataclasses.replace(params.prepare, input=[str(ROOT / p) for p in params.prepare.input])
        prepare_dataset(config, config.input, prepared)
    reviews = load_reviews(prepared, columns=["review_id", "text", "split"])
    name = next((n for n, spec in params.encoders.items() if spec.finetune), next(iter(params.encoders)))
    base = params.encoders[name].model
    overrides = {k: v for k, v in {"max_steps": args.steps, "max_length": args.max_length,
                                   "batch_size": args.batch_size}.items() if v is not None}
    config = dataclasses.replace(params.finetune, **overrides)

    runs = []
    for precision in ("fp32", "bf16"):
        print(f"{precision}:", flush=True)
        runs.append(run(precision, reviews, base, config, work, args.every))
    main_job = []
    for precision in ("fp32", "bf16") if args.time_steps else ():
        timed = dataclasses.replace(params.finetune, max_steps=args.time_steps, max_eval_pairs=8)
        print(f"main-job timing, {precision}:", flush=True)
        r = run(precision, reviews, base, timed, work, every=10**9)
        main_job.append({"precision": precision, "steps": r["steps"],
                         "seconds_per_step": round(r["seconds_without_curve"] / r["steps"], 2),
                         "main_job_seconds_estimate": round(r["seconds_without_curve"] / r["steps"]
                                                            * params.finetune.max_steps, 1)})
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    native = ft.cpu_has_native_bf16() or (torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    result = {
        "command": "python " + " ".join(["benchmarks/finetune_bf16.py", *sys.argv[1:]]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}, "
                   f"cuda {torch.cuda.is_available()}, avx512_bf16 {'avx512_bf16' in flags}, amx {'amx_bf16' in flags}",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "encoder": name, "base": base, "config": dataclasses.asdict(config),
        "train_pairs": runs[0]["train_pairs"], "eval_pairs": runs[0]["after"]["pairs"],
        "runs": runs, "comparison": compare(runs[0], runs[1]), "main_job_timing": main_job,
        "native_bf16": native,
        "note": ("This CPU has no native bf16 (no AVX512-BF16 / AMX): bf16 autocast is emulated here, so the time "
                 "ratio says nothing about bf16 hardware; the curves do say whether bf16 rounding hurts training."
                 if not native else "bf16 runs natively on this machine."),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "finetune_bf16.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "finetune_bf16.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
