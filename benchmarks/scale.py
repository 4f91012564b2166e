"""Stage two as the data grows: peak RSS and wall time of train + full-ranking evaluate, each in its own process.

    python benchmarks/scale.py                          # 1x / 4x / 16x, then the scalable model at 100k and 1M items
    python benchmarks/scale.py --factors 1 4 --no-catalogue

1. A generated set (`bertrs generate`, planted topics) at 1x, 4x and 16x (`--copies`: the same data repeated with
   fresh user and item ids, so users, items and interactions all grow by the factor), run through `bertrs prepare`,
   `bertrs train --run pop|ease|neumf` and `bertrs evaluate` (sampled + full ranking), each command in its own
   process so its peak RSS (`/usr/bin/time`'s maximum resident set) is its own.
2. The scalable item model (pipeline/ranking/models/scalable.py) alone at 100k and 1M items on generated power-law
   interactions with random 32-d item/user profiles: two passes as `train` makes them, holding the best pass's copy
   of A (a stand-in validation score that rises every pass; ranking itself is timed separately), the time per pass
   and peak RSS next to the memory estimate of pipeline/ranking/training/memory.py and the dense-EASE estimate for
   the same catalogue.

Writes benchmarks/results/scale.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.io import write_json  # noqa: E402
from pipeline.ranking.training.memory import GB, Shape, dense_bytes, scalable_bytes  # noqa: E402

BIN = Path(sys.executable).parent
PARAMS = """prepare:
  min_user_reviews: 3
  min_item_reviews: 3
  k_core: true
  max_users: null
runs:
  pop: {model: pop}
  ease: {model: ease}
  neumf: {model: neumf}
train:
  device: cpu
models:
  neumf: {epochs: 3, patience: 3, batch_size: 1024}
evaluate:
  protocols: [sampled, full]
"""


def timed(command: list[str], log: Path) -> dict:
    """Run one command under /usr/bin/time; its wall seconds and peak RSS (MB)."""
    stats = log.with_suffix(".time")
    t0 = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", str(stats), *command],
                              stdout=out, stderr=subprocess.STDOUT,
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}); see {log}")
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(int(stats.read_text().split()[-1]) / 1024)}


def growth(factors: list[int], users: int, items: int, work: Path) -> list[dict]:
    params = work / "params.yaml"
    params.write_text(PARAMS)
    rows = []
    for factor in factors:
        root = work / f"x{factor}"
        root.mkdir(parents=True, exist_ok=True)
        dump = root / "reviews.json.gz"
        bertrs = [str(BIN / "bertrs")]
        timed(bertrs + ["generate", str(dump), "--users", str(users), "--items", str(items), "--topics", "8",
                        "--copies", str(factor)], root / "generate.log")
        row = {"factor": factor}
        row["prepare"] = timed(bertrs + ["prepare", "--input", str(dump), "--out", str(root / "prepared"),
                                         "--params", str(params)], root / "prepare.log")
        stats = json.loads((root / "prepared" / "stats.json").read_text())
        row["data"] = {k: stats["table1"][k] for k in ("users", "items", "reviews")}
        for run in ("pop", "ease", "neumf"):
            row[f"train_{run}"] = timed(bertrs + ["train", "--prepared", str(root / "prepared"), "--run", run,
                                                   "--out", str(root / "models" / run), "--curves",
                                                   str(root / "curves" / f"{run}.csv"), "--params", str(params),
                                                   "--no-progress"], root / f"train_{run}.log")
        row["evaluate"] = timed(bertrs + ["evaluate", "--prepared", str(root / "prepared"), "--models",
                                          str(root / "models"), "--metrics", str(root / "metrics.json"), "--table",
                                          str(root / "table.md"), "--plots-dir", str(root / "at_k"), "--params",
                                          str(params)], root / "evaluate.log")
        metrics = json.loads((root / "metrics.json").read_text())
        row["full_ndcg@10"] = {run: round(metrics[run]["full"]["ndcg@10"], 4) for run in metrics}
        print(row, flush=True)
        rows.append(row)
    return rows


SCALABLE_PASSES = 2
SCALABLE_ONE = f"PASSES = {SCALABLE_PASSES}\n" + """
import itertools, sys, time, numpy as np, torch
from types import SimpleNamespace
from pipeline.ranking.models.scalable import ScalableItemModel
n_users, n_items, per_user, rank, batch = (int(a) for a in sys.argv[1:6])
rng = np.random.default_rng(0)
popularity = rng.pareto(1.5, n_items) + 1.0
popularity /= popularity.sum()
users = np.repeat(np.arange(n_users), per_user)
items = rng.choice(n_items, size=len(users), p=popularity)
profiles = SimpleNamespace(users=rng.standard_normal((n_users, 32)).astype(np.float32),
                           items=rng.standard_normal((n_items, 32)).astype(np.float32))
t0 = time.perf_counter()
model = ScalableItemModel(n_users, n_items, profiles, rank=rank, epochs=PASSES, batch_users=batch)
rising = itertools.count()  # a stand-in validation that improves every pass, so each pass's A is copied as the best
model.fit_on_validation(users, items, lambda: {"valid_ndcg@10": float(next(rising))})
fit = (time.perf_counter() - t0) / PASSES
t0 = time.perf_counter()
scores = model.score_items(torch.arange(256), slice(0, min(n_items, 65536)))
print("RESULT", round(fit, 1), round(time.perf_counter() - t0, 2), len(users))
"""


def catalogue(sizes: list[tuple[int, int]], per_user: int, rank: int, batch: int, work: Path) -> list[dict]:
    rows = []
    for n_users, n_items in sizes:
        log = work / f"scalable_{n_items}.log"
        row = timed([sys.executable, "-c", SCALABLE_ONE, str(n_users), str(n_items), str(per_user), str(rank),
                     str(batch)], log)
        fit_s, score_s, nnz = log.read_text().split("RESULT")[-1].split()
        shape = Shape(n_users, n_items, int(nnz), 32)
        row.update(users=n_users, items=n_items, interactions=int(nnz), rank=rank, batch_users=batch,
                   epoch_s=float(fit_s), score_256_users_x_65536_items_s=float(score_s),
                   estimate_mb=round(scalable_bytes(shape, rank) / 2**20),
                   dense_ease_estimate_gb=round(dense_bytes(shape) / GB))
        print(row, flush=True)
        rows.append(row)
    return rows


def markdown(result: dict) -> str:
    lines = [f"# Stage two at growing size ({result['date']})", "",
             f"`{result['command']}` on {result['machine']['cpus']} shared CPUs ({result['machine']['platform']}). "
             "Every cell is one command in its own process: wall seconds / peak RSS MB (`/usr/bin/time`). "
             "neumf: 3 epochs (models.neumf.epochs in the benchmark's params), so its time is per 3 epochs. The files "
             "are rewritten after each part: a part missing below had not finished when the run stopped.", ""]
    if result["growth"]:
        lines += ["## Generated set at 1x / 4x / 16x", "",
                  "| factor | users | items | reviews | prepare | train pop | train ease | train neumf | "
                  "evaluate (all 3, sampled + full) | full NDCG@10 pop / ease / neumf |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in result["growth"]:
            cell = lambda k: f"{r[k]['wall_s']} s / {r[k]['peak_rss_mb']} MB"  # noqa: E731
            nd = r["full_ndcg@10"]
            lines.append(f"| {r['factor']}x | {r['data']['users']:,} | {r['data']['items']:,} | "
                         f"{r['data']['reviews']:,} | "
                         f"{cell('prepare')} | {cell('train_pop')} | {cell('train_ease')} | {cell('train_neumf')} | "
                         f"{cell('evaluate')} | {nd.get('pop')} / {nd.get('ease')} / {nd.get('neumf')} |")
        lines.append("")
    if result["catalogue"]:
        lines += [f"## Scalable item model at catalogue size ({SCALABLE_PASSES} passes, the best pass's A copied as "
                  "under validation)", "",
                  "| users | items | interactions | rank | s per pass | "
                  "score 256 users x 65,536 items s | peak RSS MB | estimate MB | dense EASE estimate GB |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in result["catalogue"]:
            lines.append(f"| {r['users']:,} | {r['items']:,} | {r['interactions']:,} | {r['rank']} | {r['epoch_s']} | "
                         f"{r['score_256_users_x_65536_items_s']} | {r['peak_rss_mb']} | {r['estimate_mb']} | "
                         f"{r['dense_ease_estimate_gb']:,} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factors", type=int, nargs="*", default=[1, 4, 16])
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--catalogue", type=int, nargs="*", default=[100_000, 1_000_000], help="items; [] to skip")
    parser.add_argument("--catalogue-users", type=int, default=10_000)
    parser.add_argument("--per-user", type=int, default=20)
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--batch-users", type=int, default=256)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "scale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = {
            "date": date.today().isoformat(),
            "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:]),
            "growth": [],
            "catalogue": [],
        }
        for factor in args.factors:  # written after each part: a long run keeps what finished before it
            result["growth"] += growth([factor], args.users, args.items, work)
            save(result, args.out)
        for n_items in args.catalogue:
            result["catalogue"] += catalogue([(args.catalogue_users, n_items)], args.per_user, args.rank,
                                             args.batch_users, work)
            save(result, args.out)


def save(result: dict, out: Path) -> None:
    write_json(out.with_suffix(".json"), result)
    out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {out}.{{json,md}}", flush=True)


if __name__ == "__main__":
    main()
