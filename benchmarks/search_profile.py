"""Where the dense bert_rs stage's minutes go at the paper's size: each step of its fit, search and final fit, timed.

    python benchmarks/search_profile.py                      # the paper's shape, screened and unscreened
    python benchmarks/search_profile.py --users 600 --items 3000 --screen on --out build/search_profile  # a look
    python benchmarks/search_profile.py --screen on --prepared build/paper_scale/repo/data/prepared \
        --gram build/paper_scale/repo/data/gram      # paper_scale.py's data and its gram stage, the stage alone
    python benchmarks/search_profile.py --screen on --precision both ...   # float64 and float32 grids side by side

The data has the paper's shape as benchmarks/paper_scale.py generates it (3,764 users, 24.2 reviews each over 22,000
items of a flattened popularity, 50 topics; the default 3/3 k-core then leaves about 17k items and 83k reviews),
prepared with params.yaml's defaults (leave-one-out, final fit on training + validation pairs). The profiles are
random unit vectors of the MiniLM width (384): the time of every step depends on the shapes, not on what the vectors
say, and no encoder pass (an hour here) is needed. bert_rs is trained by the library's own `train` with params.yaml's
`models.bert_rs` grid, in this process, with a cumulative wall-clock timer around each step, once with the search
screened (`train.screen_search`, pipeline/ranking/selection/select.py) and once without, one after the other (or, with
`--precision both`, once with the grid scored in float64 and once in float32: `train.search_precision`). As in
the DAG, the decomposition the search starts from is made once before the stage (`bertrs gram`, data/gram/: its time
is given beside the stage's, not in it) and the stage reads it; `--own-decomposition` has the stage take its own.

    gram              X^T X built from the training pairs (the search's m, the final fit)
    decomposition     the eigendecomposition of X^T X that the whole search starts from (`EigenGram`), where the
                      stage takes its own
    solves            the Cholesky solves: the chosen setting in the final fit
    x Q per lambda    the held-out users' rows times (X^T X + lambda I)^-1 (one (users x items) x (items x items)
                      product per lambda and pass over the users)
    Q F               (X^T X + lambda I)^-1 F, once per (whitening, lambda) for the whole search
    item-model grid   the rest of each item model's scores: Woodbury's text-gram update, L3AE's prior
    text parts        the text matches' scores
    standardising     each part's per-user z-score
    ranking           every candidate ranked on validation (`ValidationLooks.ranks_of_sums`)
    other             the stage's total minus the steps above (x V, reading the decomposition, bookkeeping)

Writes <out>/search_profile.{json,md}, with the load average at the start and the end (quote figures from quiet
cores only).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from datetime import date
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import PeakRSS  # noqa: E402
from pipeline.config import RunSpec, load_params  # noqa: E402
from pipeline.data.prepare import prepare_dataset  # noqa: E402
from pipeline.data.prepared import load_prepared  # noqa: E402
from pipeline.data.synthetic import SyntheticSpec, write_synthetic  # noqa: E402
from pipeline.embeddings.cache import Profiles  # noqa: E402
from pipeline.io import write_json  # noqa: E402
from pipeline.ranking.models import baselines, review_ease  # noqa: E402
from pipeline.ranking.selection import select as selection  # noqa: E402
from pipeline.ranking.shared.gram import write_shared_gram  # noqa: E402
from pipeline.ranking.training import closed_form as training  # noqa: E402  (it calls select: patched to time it)
from pipeline.ranking.training.train import train  # noqa: E402

STEPS = ("gram", "decomposition", "solves", "x Q per lambda", "Q F", "item-model grid", "text parts", "standardising",
         "ranking")


class StepTimers:
    """Cumulative wall seconds of each step, by wrapping the library's functions in place while the run lasts."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._undo: list[tuple[object, str, object]] = []

    def wrap(self, owner: object, name: str, step: str) -> None:
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[step] += time.perf_counter() - start
                self.calls[step] += 1

        self._undo.append((owner, name, original))
        setattr(owner, name, timed)

    def restore(self) -> None:
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)


def paper_shaped_data(work: Path, users: int, items: int, seed: int) -> Path:
    raw = work / "raw" / "reviews.json.gz"
    prepared = work / "prepared"
    if not (prepared / "stats.json").is_file():
        write_synthetic(raw, SyntheticSpec(n_users=users, n_items=items, n_topics=50, reviews_per_user=24.2,
                                           popularity_tail=10.0, seed=seed))
        prepare_dataset(load_params(ROOT / "params.yaml").prepare, [raw], prepared)
    return prepared


def random_profiles(n_users: int, n_items: int, dim: int, seed: int) -> Profiles:
    rng = np.random.default_rng(seed)
    unit = lambda n: (lambda v: v / np.linalg.norm(v, axis=1, keepdims=True))(rng.normal(size=(n, dim)))  # noqa: E731
    users, items = unit(n_users).astype(np.float32), unit(n_items).astype(np.float32)
    return Profiles(users, items, np.ones(n_users, bool), np.ones(n_items, bool), {"dim": dim},
                    recent_users=unit(n_users).astype(np.float32))


def profile_stage(data, config, profiles: Profiles, shared_gram: Path | None) -> dict:
    """One dense bert_rs stage (fit, search, final fit) trained by the library's `train`, each step timed;
    `shared_gram`: the data/gram folder it reads its decomposition from, as the DAG's stage does."""
    timers = StepTimers()
    timers.wrap(baselines.EASE, "gram", "gram")
    timers.wrap(baselines.EigenGram, "__init__", "decomposition")
    timers.wrap(review_ease, "ridge_inverse_", "solves")
    timers.wrap(baselines.EigenGram, "times_inverse", "x Q per lambda")
    timers.wrap(baselines.EigenGram, "inverse_times", "Q F")
    timers.wrap(review_ease, "standardise_", "standardising")
    timers.wrap(review_ease, "with_side_gram", "item-model grid")
    timers.wrap(review_ease, "l3ae_scores", "item-model grid")
    timers.wrap(review_ease.ReviewAwareEASE, "text_scores", "text parts")
    timers.wrap(selection.ValidationLooks, "ranks_of_sums", "ranking")
    search = defaultdict(float)
    original_select = training.select

    def timed_select(*a, **k):
        start = time.perf_counter()
        try:
            return original_select(*a, **k)
        finally:
            search["seconds"] += time.perf_counter() - start

    training.select = timed_select
    start = time.perf_counter()
    try:
        with PeakRSS() as rss, contextlib.redirect_stdout(sys.stderr):
            result = train(RunSpec(model="bert_rs", embeddings="random"), config, data, profiles, progress=True,
                           shared_gram=shared_gram)
    finally:
        timers.restore()
        training.select = original_select
    total = time.perf_counter() - start
    steps = {step: round(timers.seconds.get(step, 0.0), 1) for step in STEPS}
    steps["other"] = round(total - sum(timers.seconds.values()), 1)
    return {"total_seconds": round(total, 1), "search_seconds": round(search["seconds"], 1),
            "peak_gb": round(rss.peak_mb / 1024, 2), "steps_seconds": steps, "calls": dict(timers.calls),
            "candidates": result.selection.looks if result.selection else 0,
            "scored_on_every_user": result.selection.screened_to if result.selection else None,
            "chosen": result.model.choices()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=3764)
    parser.add_argument("--items", type=int, default=22000, help="items generated, before the k-core")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--screen", choices=["both", "on", "off"], default="both",
                        help="train.screen_search for the run(s): both = screened, then unscreened, side by side")
    parser.add_argument("--precision", choices=["float64", "float32", "both"], default=None,
                        help="train.search_precision for the run(s) (default: params.yaml's); both = float32, then "
                             "float64, side by side (with --screen on or off)")
    parser.add_argument("--prepared", type=Path, default=None,
                        help="profile on this prepared folder instead of generating one (e.g. paper_scale.py's)")
    parser.add_argument("--gram", type=Path, default=None,
                        help="a gram stage's folder for --prepared, read instead of decomposing again")
    parser.add_argument("--own-decomposition", action="store_true",
                        help="the stage decomposes X^T X itself instead of reading the gram stage's decomposition")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "search_profile")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.screen == "both" and args.precision == "both":
        parser.error("compare one thing at a time: --precision both needs --screen on or off")
    load_start = os.getloadavg()
    data = load_prepared(args.prepared or paper_shaped_data(args.work, args.users, args.items, args.seed))
    config = load_params(ROOT / "params.yaml").ranking
    profiles = random_profiles(data.n_users, data.n_items, args.dim, args.seed)
    screens = {"screened": True, "unscreened": False}
    screens = screens if args.screen == "both" else {
        name: on for name, on in screens.items() if on == (args.screen == "on")}
    precisions = ["float32", "float64"] if args.precision == "both" else [
        args.precision or config.train.search_precision]
    # each run's train settings, named by what differs between them
    variants = {name if args.precision != "both" else f"{name} {precision}":
                {"screen_search": on, "search_precision": precision}
                for name, on in screens.items() for precision in precisions}
    shared, gram_seconds = None, None
    if args.gram is not None and not args.own_decomposition:
        shared = args.gram  # made by an earlier gram stage; its time is that stage's
    elif not args.own_decomposition:
        shared, start = args.work / "gram", time.perf_counter()
        write_shared_gram(data, shared, config.train.memory_budget_gb)
        gram_seconds = round(time.perf_counter() - start, 1)
    runs = {name: profile_stage(data, config.override(**settings), profiles, shared)
            for name, settings in variants.items()}
    report = {
        "meta": {"date": date.today().isoformat(),
                 "command": " ".join(["python benchmarks/search_profile.py", *sys.argv[1:]]),
                 "code": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                        text=True).stdout.strip(),
                 "machine": f"{platform.node()} ({os.cpu_count()} CPUs, "
                            f"{psutil.virtual_memory().total / 2**30:.0f} GiB)",
                 "load_average_start": load_start, "load_average_end": os.getloadavg()},
        "shape": {"users": data.n_users, "items": data.n_items, "training_pairs": len(data.train),
                  "validation_users": int(len(np.unique(data.valid.users))), "dim": args.dim},
        "gram_stage_seconds": gram_seconds,
        "runs": runs,
    }
    if len(runs) == 2:
        # the runs come faster variant first (float32, screened); the ratio is the slower over it
        (first, slow), (second, fast) = reversed(runs.items())
        report["ratio"] = {"of": f"{first} / {second}", "wall": round(slow["total_seconds"] / fast["total_seconds"], 2)}
        report["same_choice"] = slow["chosen"] == fast["chosen"]
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "search_profile.json", report)
    lines = ["# Where the dense bert_rs stage's minutes go", "",
             f"{report['meta']['date']}, {report['meta']['machine']}, code {report['meta']['code']}, "
             f"`{report['meta']['command']}`; load average "
             f"{load_start[0]:.2f} at the start, {report['meta']['load_average_end'][0]:.2f} at the end.", "",
             f"{data.n_users:,} users, {data.n_items:,} items, {len(data.train):,} training pairs, "
             f"{report['shape']['validation_users']:,} validation users; random {args.dim}-dim profiles (timing "
             "depends on shapes only).", ""]
    if args.prepared is not None:
        lines += [f"Prepared data read from `{args.prepared}`" + (f", the decomposition from `{args.gram}` (made "
                  "there by the gram stage; not timed here)." if args.gram and not args.own_decomposition else "."), ""]
    if gram_seconds is not None:
        lines += [f"The decomposition the search starts from was made once before the stage, as the DAG's gram stage "
                  f"does (`write_shared_gram`), in {gram_seconds / 60:.1f} min; the stage read it.", ""]
    for name, run in runs.items():
        scored = run["scored_on_every_user"]
        settings = ", ".join(f"{key}: {str(value).lower()}" for key, value in variants[name].items())
        lines += [f"**{name}** (`train` {settings}): whole stage "
                  f"{run['total_seconds'] / 60:.1f} min, of which the validation search "
                  f"{run['search_seconds'] / 60:.1f}; {run['candidates']:,} candidates scored"
                  + (f", {scored:,} of them on every validation user" if scored is not None else "")
                  + f"; peak RSS {run['peak_gb']} GB.", ""]
    names = list(runs)
    lines += ["| step | " + " | ".join(f"{name} min | share" for name in names) + " | calls |",
              "|---|" + "---|---|" * len(names) + "---|"]
    for step in runs[names[0]]["steps_seconds"]:
        cells = [f"{run['steps_seconds'][step] / 60:.1f} | {run['steps_seconds'][step] / run['total_seconds']:.0%}"
                 for run in runs.values()]
        lines.append(f"| {step} | " + " | ".join(cells) + f" | {runs[names[0]]['calls'].get(step, '')} |")
    if len(runs) == 2:
        lines += ["", f"Wall time {report['ratio']['of']}: {report['ratio']['wall']}x, measured in one process one "
                  f"after the other; the same setting chosen: {report['same_choice']}."]
    (args.out / "search_profile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
