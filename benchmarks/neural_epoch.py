"""Where a neural head's epoch goes at the paper's shape: its training steps (with Adam's foreach and fused kernels,
timed in one process, alternating) and its full-ranking validation.

    python benchmarks/neural_epoch.py                      # 3,764 users x 14,838 items, 384-dim profiles
    python benchmarks/neural_epoch.py --steps 50 --valid-users 256 --models gmf bert_rs_paper   # a quick look

Each model is built from params.yaml's section by the registry (`build_model`), on random profiles of the cache's
width (every step's time depends on the shapes alone), at the shape of the paper-shaped twin in
benchmarks/results/paper_scale_like/ (3,764 users, 14,838 items, 75,658 training pairs by default). A training step
is the SGD loop's own (`train_epoch`'s body: the model's loss on a batch of `models.<name>.batch_size` positives
with their negatives, backward, Adam's step); an epoch is training pairs x (1 + negatives) / batch examples, so its
time is `--steps` timed steps scaled up. Validation is `score_all` over `--valid-users` users (every item, as full
ranking scores them), scaled to all users. Both Adam kernels start from the same weights and see the same batches;
`fused` is what the SGD loop uses (pipeline/ranking/training/sgd.py). Results:
benchmarks/results/neural_epoch.{json,md}, with the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import write_report  # noqa: E402
from pipeline.config import RunSpec, load_params  # noqa: E402
from pipeline.embeddings.cache import Profiles  # noqa: E402
from pipeline.ranking.registry import build_model  # noqa: E402

MODELS = ("gmf", "mlp", "neumf", "bert_rs_paper", "bert_rs_neural")
KERNELS = ("foreach", "fused")


def random_profiles(n_users: int, n_items: int, dim: int, seed: int) -> Profiles:
    rng = np.random.default_rng(seed)
    return Profiles(rng.standard_normal((n_users, dim), dtype=np.float32),
                    rng.standard_normal((n_items, dim), dtype=np.float32),
                    np.ones(n_users, bool), np.ones(n_items, bool), {})


def step_seconds(model: torch.nn.Module, settings, batches: list, kernel: str) -> float:
    """Mean seconds of one training step over `batches` (after one untimed step)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay,
                                 **({"fused": True} if kernel == "fused" else {"foreach": True}))
    model.train()

    def step(users, pos, neg):
        loss = model.loss(users, pos, neg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(*batches[0])
    start = time.perf_counter()
    for batch in batches[1:]:
        step(*batch)
    return (time.perf_counter() - start) / (len(batches) - 1)


def validation_seconds(model, n_users: int, sample: int) -> float:
    """Seconds to score every item for every user, from `sample` users in batches of 256."""
    model.eval()
    users = torch.arange(min(sample, n_users))
    with torch.no_grad():
        model.score_all(users[:8])
        start = time.perf_counter()
        for chunk in users.split(256):
            model.score_all(chunk)
    return (time.perf_counter() - start) * n_users / len(users)


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    config = load_params(args.params).ranking
    profiles = random_profiles(args.users, args.items, args.dim, args.seed)
    load_before = os.getloadavg()
    rows = {}
    for name in args.models:
        settings = config.section(name)
        spec = RunSpec(model=name, embeddings="random" if name.startswith("bert_rs") else None)
        torch.manual_seed(args.seed)
        initial = build_model(spec, config, args.users, args.items, profiles)
        generator = torch.Generator().manual_seed(args.seed)
        batches = [(torch.randint(0, args.users, (settings.batch_size,), generator=generator),
                    torch.randint(0, args.items, (settings.batch_size,), generator=generator),
                    torch.randint(0, args.items, (settings.batch_size, settings.num_negatives), generator=generator))
                   for _ in range(args.steps + 1)]
        seconds = {kernel: [] for kernel in KERNELS}
        for _ in range(args.rounds):  # alternating, each from the same start
            for kernel in KERNELS:
                model = build_model(spec, config, args.users, args.items, profiles)
                model.load_state_dict(initial.state_dict())
                seconds[kernel].append(step_seconds(model, settings, batches, kernel))
        steps_per_epoch = args.pairs / settings.batch_size  # each batch: batch_size positives with their negatives
        step = {kernel: float(np.median(s)) for kernel, s in seconds.items()}
        valid = validation_seconds(initial, args.users, args.valid_users)
        parameters = sum(p.numel() for p in initial.parameters())
        rows[name] = {"parameters": parameters, "batch_size": settings.batch_size, "steps_per_epoch": steps_per_epoch,
                      "step_ms": {k: 1000 * v for k, v in step.items()},
                      "epoch_training_s": {k: v * steps_per_epoch for k, v in step.items()},
                      "validation_s": valid, "fused_speedup": step["foreach"] / step["fused"]}
        print(name, rows[name], flush=True)
    return {"date": date.today().isoformat(), "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
            "command": "python benchmarks/neural_epoch.py " + " ".join(sys.argv[1:]),
            "threads": args.threads, "torch": torch.__version__,
            "shape": {"users": args.users, "items": args.items, "training_pairs": args.pairs, "dim": args.dim},
            "steps_timed": args.steps, "rounds": args.rounds, "valid_users_timed": args.valid_users,
            "load_average_before": load_before, "load_average_after": os.getloadavg(), "models": rows}


def markdown(report: dict) -> str:
    shape = report["shape"]
    lines = [
        "# Where a neural head's epoch goes at the paper's shape", "",
        f"{report['date']}, {report['machine']}, {report['threads']} threads, torch {report['torch']}, "
        f"`{report['command']}`. Load average before {report['load_average_before'][0]:.2f}, after "
        f"{report['load_average_after'][0]:.2f}. Shape: {shape['users']:,} users, {shape['items']:,} items, "
        f"{shape['training_pairs']:,} training pairs, {shape['dim']}-dim profiles (random: times depend on shapes "
        f"only). A step: median over {report['rounds']} alternating rounds of {report['steps_timed']} steps; "
        f"validation: `score_all` over {report['valid_users_timed']} users, scaled to all.", "",
        "| model | parameters | steps an epoch | step, foreach Adam (ms) | step, fused Adam (ms) | fused speed-up | "
        "epoch's training, fused (s) | one validation (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in report["models"].items():
        lines.append(f"| {name} | {row['parameters']:,} | {row['steps_per_epoch']:,.0f} | "
                     f"{row['step_ms']['foreach']:.1f} | {row['step_ms']['fused']:.1f} | {row['fused_speedup']:.2f}x | "
                     f"{row['epoch_training_s']['fused']:.1f} | {row['validation_s']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--users", type=int, default=3764)
    parser.add_argument("--items", type=int, default=14838)
    parser.add_argument("--pairs", type=int, default=75658, help="training pairs (an epoch's positives)")
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--valid-users", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    write_report(args.out, "neural_epoch", run(args), markdown)


if __name__ == "__main__":
    main()
