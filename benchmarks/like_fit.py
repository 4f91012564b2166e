"""How closely `bertrs generate --like` reproduces each shared review set, signals included.

    python benchmarks/like_fit.py            # minutes; writes benchmarks/results/like_fit.{md,json}
    python benchmarks/like_fit.py --dag digital_music   # and the DAG on both sides of a set (about 15 min a side)
    python benchmarks/like_fit.py --text planted        # twins whose reviews are planted words, not real texts
                                                        # (writes like_fit_planted.{md,json})

For each shared set (skipped where ../shared/data, or $BERTRS_SHARED_DATA, lacks it): prepare it with params.yaml
(random protocol; the measures read every review whatever its split), generate a set like it with the knobs fitted
(pipeline/data/likeness.py), and set the two sets' measures side by side: size, user activity, item popularity,
review length, and the next-review predictability from popularity, co-occurrence and text with the text-neighbour
lift (pipeline/data/signals.py). Resumable: each finished set is a line in build/like_fit/runs.jsonl.

`--dag SET...` also asks whether the models order on the twin as on the real set: this repository's DAG (`dvc
repro`, every setting the default) runs in a clone under the work folder whose prepare.input is the twin, and in
another whose input is the real set, and each run's full-ranking test NDCG@10 goes beside the other's. The bundled
sample's real side is the repository's own committed metrics.json (the DAG on the sample), so it is not run again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import subprocess
import sys
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from benchmarks.common import DATASETS, Ledger  # noqa: E402
from pipeline.config import load_params  # noqa: E402
from pipeline.data.likeness import TEXTS, LikeSpec, write_like  # noqa: E402
from pipeline.data.prepare import prepare_dataset  # noqa: E402
from pipeline.data.signals import FITTED_MEASURES  # noqa: E402
from pipeline.io import write_json  # noqa: E402

SHAPE = (("users", "users", None), ("items", "items", None), ("reviews", "reviews", None),
         ("median activity", "user_activity", "median"), ("p90 activity", "user_activity", "p90"),
         ("item-popularity Gini", "item_popularity_gini", None), ("median review words", "review_words", "median"))


def fit_one(dataset: str, work: Path, seed: int, text: str) -> dict:
    """Prepare one shared set, generate a set like it (`text` reviews) with fitted knobs, and return the figures
    file's content."""
    prepared = work / dataset / "prepared"
    if not (prepared / "stats.json").is_file():
        params = load_params(REPO / "params.yaml")
        config = dataclasses.replace(params.prepare, protocol="random", input=[str(DATASETS[dataset])])
        prepare_dataset(config, config.input, prepared)
    return write_like(prepared, work / dataset / f"like_{text}.json.gz", LikeSpec(seed=seed, text=text),
                      progress=lambda message: print(f"{dataset}: {message}", flush=True))


def dag_metrics(dataset: str, side: str, reviews: Path, work: Path) -> dict:
    """Each run's full-ranking test NDCG@10 from this repository's DAG on `reviews` (a clone under `work`)."""
    if side == "real" and DATASETS[dataset].parent == REPO / "data" / "sample":  # metrics.json: the DAG on it
        metrics = json.loads((REPO / "metrics.json").read_text())
    else:
        clone = work / dataset / f"dag_{side}"
        if not (clone / ".git").is_dir():
            subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        data = clone / "data" / "like_fit" / reviews.name
        data.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(reviews, data)
        params = clone / "params.yaml"
        current = yaml.safe_load(params.read_text())["prepare"]["input"]
        params.write_text(params.read_text().replace(f"input: {current}", f"input: {data.relative_to(clone)}", 1))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        print(f"{dataset}: the DAG on the {side} set in {clone}", flush=True)
        with open(work / dataset / f"dag_{side}.log", "a") as log:
            subprocess.run([str(Path(sys.executable).parent / "dvc"), "repro"], cwd=clone, env=env, check=True,
                           stdout=log, stderr=subprocess.STDOUT)
        metrics = json.loads((clone / "metrics.json").read_text())
    return {run: round(m["full"]["ndcg@10"], 4) for run, m in metrics.items()}


def markdown(rows: dict, meta: dict) -> str:
    lines = ["# Generated like a real set: each shared set and its fitted twin", "",
             f"{meta['date']}, {meta['machine']}, `{meta['command']}`. Real: the set prepared with params.yaml; "
             f"generated: `bertrs generate --like --text {meta.get('text', 'planted')}` with its knobs fitted at the "
             "real set's own size (before "
             "`prepare` filters it). Hit rates: each user's last review held out, top 10 of the items outside the "
             "user's history; text measures read against a baseline that keeps popularity and loses the text "
             "(pipeline/data/signals.py). Distance: the sum over the fitted measures (each set's own, below) of "
             "|log| of the generated-to-real ratio.", ""]
    for dataset, figures in rows.items():
        real, generated, fit = figures["real"], figures["generated"], figures["fit"]
        knobs = {knob: figures["settings"][knob] for knob in fit["knobs"]}
        lines += [f"## {dataset}", "", f"Fitted: {knobs}, after {len(fit['tried'])} settings tried; distance "
                  f"{fit['distance_while_fitting']} while fitting (mean of {fit['seeds_per_setting']} seeds), "
                  f"{fit['distance_at_unseen_seed']} at the written seed; measures fitted: "
                  f"{', '.join(fit.get('measures', FITTED_MEASURES))}.", "",
                  "| measure | real | generated |", "|---|---|---|"]
        for label, key, point in SHAPE:
            pick = (lambda side: side[key][point]) if point else (lambda side: side[key])
            lines.append(f"| {label} | {pick(real):g} | {pick(generated):g} |")
        for measure in ("popularity_hit_rate", "cooccurrence_hit_rate", "text_hit_rate", "text_hit_rate_shuffled",
                        "text_hit_lift", "text_neighbour_lift", "cooccurrence_text_hit_rate",
                        "cooccurrence_text_hit_rate_shuffled", "text_over_cooccurrence_lift"):
            if measure not in real["signals"] or measure not in generated["signals"]:  # measured before it was
                continue
            lines.append(f"| {measure.replace('_', ' ')} | {real['signals'][measure]:.4f} | "
                         f"{generated['signals'][measure]:.4f} |")
        lines.append("")
        if "dag" in figures:
            dag = figures["dag"]
            lines += ["Full-ranking test NDCG@10 of each run of the DAG, real set and twin:", "",
                      "| run | real | generated |", "|---|---|---|"]
            lines += [f"| {run} | {dag['real'].get(run, '')} | {dag['generated'].get(run, '')} |"
                      for run in dag["real"]] + [""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--work", default=str(REPO / "build" / "like_fit"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--text", choices=TEXTS, default="real", help="the twins' review words (likeness.py)")
    parser.add_argument("--dag", nargs="*", default=[], choices=list(DATASETS),
                        help="also run the DAG on these sets and their twins")
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(work / "runs.jsonl")
    rows = {}
    for dataset in args.datasets:
        if not DATASETS[dataset].is_file():
            print(f"skip {dataset}: {DATASETS[dataset]} not present", flush=True)
            continue
        key = f"{dataset}|seed {args.seed}" + ("" if args.text == "planted" else f"|text {args.text}")
        rows[dataset] = ledger.get_or_run(key, lambda: fit_one(dataset, work, args.seed, args.text))
        if dataset in args.dag:
            twin = work / dataset / f"like_{args.text}.json.gz"
            rows[dataset] = {**rows[dataset], "dag": ledger.get_or_run(f"{key}|dag", lambda: {
                "real": dag_metrics(dataset, "real", DATASETS[dataset], work),
                "generated": dag_metrics(dataset, f"generated_{args.text}", twin, work)})}
    meta = {"date": date.today().isoformat(), "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
            "command": "python benchmarks/like_fit.py" + "".join(f" {a}" for a in sys.argv[1:]), "text": args.text}
    name = "like_fit" + ("_planted" if args.text == "planted" else "")
    write_json(out / f"{name}.json", {"meta": meta, "datasets": rows})
    (out / f"{name}.md").write_text(markdown(rows, meta) + "\n")


if __name__ == "__main__":
    main()
