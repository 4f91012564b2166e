"""How closely `bertrs generate --like` reproduces each shared review set, signals included.

    python benchmarks/like_fit.py            # minutes; writes benchmarks/results/like_fit.{md,json}

For each shared set (skipped where ../shared/data, or $BERTRS_SHARED_DATA, lacks it): prepare it with params.yaml
(random protocol; the measures read every review whatever its split), generate a set like it with the knobs fitted
(pipeline/data/likeness.py), and set the two sets' measures side by side: size, user activity, item popularity,
review length, and the next-review predictability from popularity, co-occurrence and text with the text-neighbour
lift (pipeline/data/signals.py). Resumable: each finished set is a line in build/like_fit/runs.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import DATASETS, Ledger  # noqa: E402
from pipeline.config import load_params  # noqa: E402
from pipeline.data.likeness import LikeSpec, write_like  # noqa: E402
from pipeline.data.prepare import prepare_dataset  # noqa: E402
from pipeline.data.signals import FITTED_MEASURES  # noqa: E402
from pipeline.io import write_json  # noqa: E402

SHAPE = (("users", "users", None), ("items", "items", None), ("reviews", "reviews", None),
         ("median activity", "user_activity", "median"), ("p90 activity", "user_activity", "p90"),
         ("item-popularity Gini", "item_popularity_gini", None), ("median review words", "review_words", "median"))


def fit_one(dataset: str, work: Path, seed: int) -> dict:
    """Prepare one shared set, generate a set like it with fitted knobs, and return the figures file's content."""
    prepared = work / dataset / "prepared"
    if not (prepared / "stats.json").is_file():
        params = load_params(REPO / "params.yaml")
        config = dataclasses.replace(params.prepare, protocol="random", input=[str(DATASETS[dataset])])
        prepare_dataset(config, config.input, prepared)
    return write_like(prepared, work / dataset / "like.json.gz", LikeSpec(seed=seed),
                      progress=lambda message: print(f"{dataset}: {message}", flush=True))


def markdown(rows: dict, meta: dict) -> str:
    lines = ["# Generated like a real set: each shared set and its fitted twin", "",
             f"{meta['date']}, {meta['machine']}, `{meta['command']}`. Real: the set prepared with params.yaml; "
             "generated: `bertrs generate --like` with its knobs fitted at the real set's own size (before "
             "`prepare` filters it). Hit rates: each user's last review held out, top 10 of the items outside the "
             "user's history (pipeline/data/signals.py). Distance: the sum over the fitted measures "
             f"({', '.join(FITTED_MEASURES)}) of |log| of the generated-to-real ratio.", ""]
    for dataset, figures in rows.items():
        real, generated, fit = figures["real"], figures["generated"], figures["fit"]
        knobs = {knob: figures["settings"][knob] for knob in fit["knobs"]}
        lines += [f"## {dataset}", "", f"Fitted: {knobs}; distance {fit['distance_at_real_size']} after "
                  f"{len(fit['tried'])} settings tried.", "", "| measure | real | generated |", "|---|---|---|"]
        for label, key, point in SHAPE:
            pick = (lambda side: side[key][point]) if point else (lambda side: side[key])
            lines.append(f"| {label} | {pick(real):g} | {pick(generated):g} |")
        for measure in ("popularity_hit_rate", *[m for m in FITTED_MEASURES if m != "popularity_hit_rate"]):
            lines.append(f"| {measure.replace('_', ' ')} | {real['signals'][measure]:.4f} | "
                         f"{generated['signals'][measure]:.4f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--work", default=str(REPO / "build" / "like_fit"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(work / "runs.jsonl")
    rows = {}
    for dataset in args.datasets:
        if not DATASETS[dataset].is_file():
            print(f"skip {dataset}: {DATASETS[dataset]} not present", flush=True)
            continue
        rows[dataset] = ledger.get_or_run(f"{dataset}|seed {args.seed}", lambda: fit_one(dataset, work, args.seed))
    meta = {"date": date.today().isoformat(), "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
            "command": "python benchmarks/like_fit.py" + "".join(f" {a}" for a in sys.argv[1:])}
    write_json(out / "like_fit.json", {"meta": meta, "datasets": rows})
    (out / "like_fit.md").write_text(markdown(rows, meta) + "\n")


if __name__ == "__main__":
    main()
