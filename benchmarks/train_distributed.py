"""The fusion head (neumf) trained by one process and by two torchrun processes on the same generated set: the
validation metric, the scores and the wall time side by side.

    python benchmarks/train_distributed.py                       # 3000 users x 1500 items, 5 epochs
    python benchmarks/train_distributed.py --users 500 --items 300 --epochs 2

A generated set (`bertrs generate`, planted topics) goes through `bertrs prepare`; then `bertrs train --run neumf`
runs three times, each in its own process(es), on the same data and params:
    one_process_2_threads   a plain run using both cores through torch's intra-op threads
    one_process_1_thread    a plain run on one thread (the reference the two processes are compared with)
    torchrun_2_processes    `torchrun --standalone --nproc_per_node 2 -- bertrs train ...`: gloo, one thread each
Wall seconds include starting the interpreters (and torchrun's rendezvous). The checkpoints are then loaded here and
compared: best epoch, validation NDCG@10, the largest score difference over every user x item, and the largest
relative difference between the loss curves. Not a test: results go to benchmarks/results/train_distributed.{json,md}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from pipeline.data.prepared import load_prepared  # noqa: E402
from pipeline.io import write_json  # noqa: E402
from pipeline.ranking.checkpoint import load_checkpoint  # noqa: E402

BIN = Path(sys.executable).parent
PARAMS = """prepare:
  min_user_reviews: 3
  min_item_reviews: 3
  k_core: true
  max_users: null
runs:
  neumf: {{model: neumf}}
train:
  device: cpu
models:
  neumf: {{epochs: {epochs}, patience: {epochs}, batch_size: {batch_size}}}
"""
WAYS = {
    "one_process_2_threads": ([], "2"),
    "one_process_1_thread": ([], "1"),
    "torchrun_2_processes": ([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "--"], "1"),
}
REFERENCE = "one_process_1_thread"


def run(command: list[str], log: Path, threads: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": threads}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    start = time.perf_counter()
    with open(log, "w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}); see {log}")
    return time.perf_counter() - start


def losses(path: Path) -> list[float]:
    with open(path) as handle:
        return [float(row["loss"]) for row in csv.DictReader(handle)]


def measure(users: int, items: int, epochs: int, batch_size: int, work: Path) -> dict:
    bertrs = str(BIN / "bertrs")
    params = work / "params.yaml"
    params.write_text(PARAMS.format(epochs=epochs, batch_size=batch_size))
    dump = work / "reviews.json.gz"
    run([bertrs, "generate", str(dump), "--users", str(users), "--items", str(items)], work / "generate.log", "2")
    run([bertrs, "prepare", "--input", str(dump), "--out", str(work / "prepared"), "--params", str(params)],
        work / "prepare.log", "2")
    data = load_prepared(work / "prepared")
    result = {"data": {"users": data.n_users, "items": data.n_items, "train_pairs": len(data.train),
                       "valid_users": len(data.valid)}, "ways": {}}
    scores = {}
    for way, (launcher, threads) in WAYS.items():
        out = work / way
        seconds = run([*launcher, bertrs, "train", "--prepared", str(work / "prepared"), "--params", str(params),
                       "--run", "neumf", "--out", str(out), "--curves", str(work / f"{way}.csv"), "--no-progress"],
                      work / f"{way}.log", threads)
        info = json.loads((out / "run.json").read_text())
        with torch.no_grad():
            scores[way] = load_checkpoint(out, data).model.score_all(torch.arange(data.n_users))
        result["ways"][way] = {"wall_s": round(seconds, 1), "processes": info["processes"],
                               "best_epoch": info["best_epoch"],
                               "valid_ndcg@10": round(info["best_valid"]["ndcg@10"], 5),
                               "losses": losses(work / f"{way}.csv")}
        print(way, {k: v for k, v in result["ways"][way].items() if k != "losses"}, flush=True)
    reference = result["ways"][REFERENCE]
    for way, row in result["ways"].items():
        row["max_score_diff_vs_reference"] = float((scores[way] - scores[REFERENCE]).abs().max())
        row["max_loss_rel_diff_vs_reference"] = max(abs(a - b) / abs(b)
                                                    for a, b in zip(row["losses"], reference["losses"]))
        row["valid_ndcg@10_diff_vs_reference"] = round(row["valid_ndcg@10"] - reference["valid_ndcg@10"], 5)
    result["score_scale"] = float(scores[REFERENCE].std())
    return result


def markdown(result: dict) -> str:
    d = result["data"]
    lines = [f"# neumf: one process against two torchrun processes ({result['generated_at']})", "",
             f"Command: `{result['command']}`", "",
             f"Machine: {result['machine']['cpus']} CPUs shared with other work (load average at the start "
             f"{result['machine']['load_average']}), {result['machine']['platform']}, torch {result['torch']}; "
             "no GPU.", "",
             f"Data: `bertrs generate` then `bertrs prepare`: {d['users']:,} users, {d['items']:,} items, "
             f"{d['train_pairs']:,} training pairs, {d['valid_users']:,} validation positives. models.neumf: "
             f"{result['epochs']} epochs, global batch {result['batch_size']}; everything else at its default.", "",
             f"Reference: `{REFERENCE}`. Scores are logits (their standard deviation over all user x item cells: "
             f"{result['score_scale']:.3f}).", "",
             "| run | processes | wall s | best epoch | valid NDCG@10 | diff vs reference | max score diff | "
             "max loss rel. diff |", "|---|---|---|---|---|---|---|---|"]
    for way, r in result["ways"].items():
        lines.append(f"| {way} | {r['processes']} | {r['wall_s']} | {r['best_epoch']} | {r['valid_ndcg@10']} | "
                     f"{r['valid_ndcg@10_diff_vs_reference']:+} | {r['max_score_diff_vs_reference']:.2e} | "
                     f"{r['max_loss_rel_diff_vs_reference']:.2e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--items", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "train_distributed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = {
            "generated_at": datetime.now(timezone.utc).isoformat(timespec="minutes"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "load_average": round(os.getloadavg()[0], 1)},
            "torch": torch.__version__,
            "command": "python benchmarks/train_distributed.py " + " ".join(sys.argv[1:]),
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            **measure(args.users, args.items, args.epochs, args.batch_size, work),
        }
    write_json(args.out.with_suffix(".json"), result)
    args.out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {args.out}.{{json,md}}")


if __name__ == "__main__":
    main()
