"""Does scoring the dense bert_rs grid in float32 change what it chooses? Every shared dataset, both protocols.

    python benchmarks/search_precision.py                # every dataset of benchmarks/common.py, both protocols
    python benchmarks/search_precision.py --datasets gift_cards --protocols random

`train.search_precision` sets the floating-point type bert_rs's validation grid is scored in (its products with the
training Gram's eigenvectors, its item-model, text and popularity parts); the chosen setting is solved in float64
either way, and the ranks the grid compares were float32 before. Here the default bert_rs (params.yaml, cache
minilm_mean) is trained as `bertrs train` trains it, once with the grid in float64 and once in float32, on
quality.py's prepared data and cache for each dataset and protocol (in its work folder, build/quality, so the two
benchmarks share their encoder passes); written side by side: the settings chosen, validation NDCG@10 (full
ranking, the search's measurement), test NDCG@10 (full ranking, from the final fit) and the wall seconds of each
training. Where both choose the same setting the final fits are the same float64 solve, so the test scores are
equal by construction; the file says where they are not.

At the paper's size the same comparison is timed by `python benchmarks/search_profile.py --precision both`.

Writes benchmarks/results/search_precision.{json,md}; a dataset and protocol already measured is read back from
the json (delete it to measure again).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import DATASETS, PROTOCOLS, caches_for, mean_cache_of, prepared_for  # noqa: E402
from pipeline.config import Params, RunSpec, load_params  # noqa: E402
from pipeline.io import read_json, write_json  # noqa: E402
from pipeline.ranking.evaluation.evaluate import evaluate  # noqa: E402
from pipeline.ranking.registry import load_model_profiles  # noqa: E402
from pipeline.ranking.training.train import train  # noqa: E402

PRECISIONS = ("float64", "float32")


def trained_both_ways(work: Path, dataset: str, protocol: str, params: Params) -> dict:
    """bert_rs on this dataset and protocol with the grid in each precision: choices, validation and test NDCG@10,
    seconds."""
    data = prepared_for(work, dataset, protocol, params)
    cache_name = mean_cache_of(params)
    if params.finetune_reason(cache_name) is None:
        raise SystemExit(f"encoders.{cache_name} is fine-tuned: this benchmark reads the plain encoder's cache")
    cache = caches_for(work, dataset, protocol, params, data, {cache_name: params.encoders[cache_name].model})[cache_name]
    spec = RunSpec(model="bert_rs", embeddings=cache_name)
    profiles = load_model_profiles(cache, data, params.ranking.section("bert_rs"), params.ranking.train, choosing=True)
    out = {}
    for precision in PRECISIONS:
        started = time.perf_counter()
        result = train(spec, params.ranking.override(search_precision=precision), data, profiles, progress=False)
        seconds = time.perf_counter() - started
        if result.model.solver != "dense":  # the setting is the dense grid's: the scalable solver ignores it
            raise SystemExit(f"{dataset}/{protocol}: bert_rs trained with the {result.model.solver} solver")
        test = evaluate(result.model, data, "test", ks=[10], protocols=["full"])
        out[precision] = {"chosen": result.model.choices(), "valid_full_ndcg@10": result.best_valid["ndcg@10"],
                          "test_full_ndcg@10": test["full"]["ndcg@10"], "seconds": round(seconds, 1)}
    return out


def setting_of(chosen: dict) -> dict:
    """The setting a run chose, without its count of validation looks."""
    return {k: v for k, v in chosen.items() if k != "validation_looks"}


def same_setting(a: dict, b: dict) -> bool:
    return setting_of(a) == setting_of(b)


def report(results: dict, out: Path, command: str) -> None:
    code = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    meta = {"date": date.today().isoformat(), "command": command, "code": code.strip(),
            "machine": f"{platform.node()} ({os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB)",
            "load_average_end": os.getloadavg()}
    write_json(out / "search_precision.json", {"meta": meta, "results": results})
    lines = ["# The dense bert_rs grid scored in float32 against float64", "",
             f"{meta['date']}, {meta['machine']}, code {meta['code']}, `{command}` (load average {meta['load_average_end'][0]:.2f} at "
             "the end; the seconds are one run each, on a shared machine: read them as a rough ratio only). "
             "The default bert_rs trained twice per row, `train.search_precision` float64 then float32; the chosen "
             "setting is solved in float64 either way.", "",
             "| dataset / protocol | same setting chosen | valid NDCG@10 float64 | float32 | test NDCG@10 float64 | "
             "float32 | seconds float64 | float32 | setting (float64) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, row in results.items():
        a, b = row["float64"], row["float32"]
        setting = setting_of(a["chosen"])
        lines.append(f"| {key} | {'yes' if same_setting(a['chosen'], b['chosen']) else 'no'} | "
                     f"{a['valid_full_ndcg@10']:.6f} | {b['valid_full_ndcg@10']:.6f} | {a['test_full_ndcg@10']:.6f} | "
                     f"{b['test_full_ndcg@10']:.6f} | {a['seconds']} | {b['seconds']} | `{setting}` |")
    differing = [key for key, row in results.items() if not same_setting(row["float64"]["chosen"],
                                                                         row["float32"]["chosen"])]
    lines += ["", "Every row chose the same setting in both precisions, so its test scores are the same solve."
              if not differing else f"Rows where the choice moved: {', '.join(differing)} (their float32 settings "
              "are in search_precision.json)."]
    (out / "search_precision.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated names of benchmarks/common.py")
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "quality")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    datasets, protocols = args.datasets.split(","), args.protocols.split(",")
    unknown = [d for d in datasets if d not in DATASETS] + [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)} (datasets: {', '.join(DATASETS)}; protocols: "
                     f"{', '.join(PROTOCOLS)})")
    missing = [d for d in datasets if not DATASETS[d].is_file()]
    if missing:
        raise SystemExit(f"no data for {', '.join(missing)}: {', '.join(str(DATASETS[d]) for d in missing)}")
    params = load_params(ROOT / "params.yaml")
    args.out.mkdir(parents=True, exist_ok=True)
    earlier = args.out / "search_precision.json"
    results = read_json(earlier)["results"] if earlier.is_file() else {}
    command = " ".join(["python benchmarks/search_precision.py", *sys.argv[1:]])
    for dataset in datasets:
        for protocol in protocols:
            key = f"{dataset} / {protocol}"
            if key in results:
                continue
            print(f"{time.strftime('%H:%M:%S')} {key} ...", flush=True)
            results[key] = trained_both_ways(args.work, dataset, protocol, params)
            print(f"{time.strftime('%H:%M:%S')} {key}: {results[key]}", flush=True)
            report(results, args.out, command)
    report(results, args.out, command)


if __name__ == "__main__":
    main()
