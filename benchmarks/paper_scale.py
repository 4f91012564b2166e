"""The whole DAG at the paper's size on this machine: time and peak memory per stage.

    python benchmarks/paper_scale.py                 # resumes where an interrupted run stopped
    python benchmarks/paper_scale.py --stages train_text@bert_rs   # these stages and the stages they need only
    python benchmarks/paper_scale.py --stages train_text@bert_rs --again   # measured again (after a code change)
    python benchmarks/paper_scale.py --fresh         # starts over (deletes --work)
    python benchmarks/paper_scale.py --like data/prepared   # on a set generated like a real one, at the paper's shape
    python benchmarks/paper_scale.py --like data/prepared --like-text planted   # its reviews planted words instead

The data has about the paper's shape after the default 3/3 k-core (the paper: 3,764 users, 17,647 items, 83,599
reviews): the generator's interactions (`pipeline/data/synthetic.py`: 50 topics, each user preferring two, a few
planted topic words per review), 3,764 users with 24.2 reviews each on average over 22,000 items of a flattened
popularity (Pareto shape 10), which the k-core cuts to roughly 84k reviews and 17k items (the generator's default
long tail would leave only 11k items at this review count), with each review's text lengthened by a review of the
bundled sample drawn at random, so that the encoder sees the sample's review lengths (about 200 words, cut at
`embed.max_length` tokens) while the planted words keep a text signal. The DAG is this repository's own: a clone
under --work whose params.yaml differs only in `prepare.input` (every other setting is the default), reproduced
with `dvc repro --single-item` one stage at a time in `dvc stage list` order. After each stage its wall time and
the peak RSS of its process tree are appended to <work>/stages.jsonl (`benchmarks/common.py`, Ledger), so a run stopped
at any point (kill -9 included) resumes at the first stage not recorded (the fine-tune and embed stages also resume
from their own checkpoints and shards; such a stage is marked resumed, its times covering the last run only). CPU
minutes are recorded beside wall minutes: they hardly move when other jobs share the cores. Results:
benchmarks/results/paper_scale.{json,md}, rewritten after every stage.

With `--like PREPARED` the data is instead `bertrs generate --like PREPARED --shape` at LIKE_SHAPE (users, items
and reviews before the k-core): the prepared set's activity, popularity and review lengths and, by default, its own
review texts (`--like-text planted`: topic and filler words), with the planted signals fitted to its next-review
predictability (pipeline/data/likeness.py), so that each model's test NDCG@10, reported beside its minutes, means
something at that shape. Fitted to the bundled Digital Music sample, the 3/3 k-core leaves about the paper's users
and reviews (3,764 and 82,356 with planted text) but 15,004 items, not 17,647: at the paper's review count the
sample's popularity curve gives that many items three or more reviews. Its workspace and results default to
build/paper_scale_like and benchmarks/results/paper_scale_like/ (with `_planted` after both for planted text).

The whole DAG takes hours on 2 cores, longer than one sitting may allow, and a workspace may not outlive it: the
results file is itself a ledger. A stage recorded there by an earlier run keeps its row (with the date and code it
ran with) until this run measures it again, so `--stages` can finish the table a few stages at a time: it runs the
named stages and the stages they read from (`dvc dag`), each measured again where this workspace lacks its outputs.
The workspace runs this repository's committed code: a clone whose commit is behind is moved to it first (its
stage outputs stay; each row records the commit it ran with), and `--again` measures the named stages again although
this workspace has measured them, as after a change to their code.

After the DAG, two steps beside it (recorded the same way, outside the DAG's totals) answer what the default would
give up past its memory budget: bert_rs with `solver: scalable` (the low-rank model `auto` switches to) trained on
the same prepared data and embedding cache as the DAG's dense bert_rs, then both evaluated by `bertrs evaluate` on
the test split (<work>/scalable/).

A step beside the DAG run only when named, `--stages train@pop train@ease "beside: evaluate the runs trained so
far"`, scores the test split for every run the workspace has trained (`bertrs evaluate --every-folder`, into the
work folder where the DAG's own evaluate table is kept), so that a few runs' quality at the paper's shape is read
without the hours every other run of the DAG takes first.

`--floor` measures why the end-to-end target is out of reach on a machine like this one: the arithmetic of the DAG's
encoder passes (torch's FlopCounterMode on one forward pass at each truncated review length, times the prepared
reviews of that length; padding not counted, so a lower bound) against the machine's fastest fp32 matrix product
(`torch.mm` of 2048 x 2048, best of five), which no encoder layer can beat. Their ratio is the least time stage one can
take here; it is recorded in the results file beside the measured passes and kept until measured again.

The comparison table the DAG's `evaluate` wrote is copied to <work>/comparison.md as soon as that stage is measured:
the clone's reports/ are tracked by git, so moving the clone to a later commit puts the bundled sample's table back.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import psutil
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import Ledger, run_measured  # noqa: E402
from pipeline.data.likeness import TEXTS, LikeSpec, write_like  # noqa: E402
from pipeline.data.synthetic import SyntheticSpec, generate_records  # noqa: E402
from pipeline.io import atomic_path, write_json  # noqa: E402
from pipeline.config import RankingConfig  # noqa: E402
from pipeline.ranking.registry import fit_memory  # noqa: E402
from pipeline.ranking.training.memory import GB, Shape  # noqa: E402

BIN = Path(sys.executable).parent
SAMPLE = ROOT / "data" / "sample"
RESULTS = ROOT / "benchmarks" / "results"
PAPER = {"users": 3764, "items": 17647, "reviews": 83599}
LIKE_SHAPE = (3764, 28000, 98000)  # --like: generated users, items and reviews, before the k-core (see the docstring)
# the targets on this 2-core machine: the DAG end to end, its peak memory, stage two, the dense bert_rs stage
TARGETS = {"minutes": 90, "peak_gb": 12, "stage_two_minutes": 30, "dense_bert_rs_minutes": 8}
DAG_TABLE = "comparison.md"  # the DAG's comparison table, kept in the work folder (see the docstring)
DAG_METRICS = "metrics.json"  # and its metrics, for each run's test NDCG@10 beside its minutes
MATMUL_SIDE = 2048


def paper_shaped_reviews(path: Path, seed: int = 0) -> Path:
    """The generator's paper-shaped records, each review's text followed by a sample review drawn at random."""
    texts = []
    for file in sorted(SAMPLE.glob("*.json*")):
        opener = gzip.open if file.suffix == ".gz" else open
        with opener(file, "rt", encoding="utf-8") as handle:
            texts += [t for t in (json.loads(line).get("reviewText") for line in handle) if t]
    if not texts:
        raise SystemExit(f"{SAMPLE}: no review texts found to lengthen the generated reviews with")
    spec = SyntheticSpec(n_users=PAPER["users"], n_items=22000, n_topics=50, reviews_per_user=24.2,
                         popularity_tail=10.0, seed=seed)
    rng = np.random.default_rng(seed)
    with atomic_path(path) as tmp, gzip.open(tmp, "wt", encoding="utf-8") as handle:
        for record in generate_records(spec):
            record["reviewText"] = f"{record['reviewText']} {texts[int(rng.integers(len(texts)))]}"
            handle.write(json.dumps(record) + "\n")
    return path


def workspace(work: Path, like: Path | None = None, like_text: str = "real") -> Path:
    """A clone of this repository's committed state whose prepare.input is the paper-shaped file (generated like
    the prepared set `like`, with `like_text` reviews, when given)."""
    clone = work / "repo"
    if not (clone / ".git").is_dir():
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    follow_committed_code(clone)
    data = clone / "data" / "paper_scale" / "reviews.json.gz"
    source = {"like": str(like) if like else None, "shape": list(LIKE_SHAPE) if like else None,
              "text": like_text if like else None}
    made_from = data.parent / "source.json"
    if data.is_file():
        recorded = json.loads(made_from.read_text()) if made_from.is_file() else {"like": None, "shape": None}
        recorded.setdefault("text", "planted" if recorded["like"] else None)  # written before real text came
        if recorded != source:
            raise SystemExit(f"{data} was generated from {recorded}, not {source}: use another --work (or --fresh)")
    else:
        data.parent.mkdir(parents=True, exist_ok=True)
        if like is None:
            paper_shaped_reviews(data)
        else:
            write_like(like, data, LikeSpec(shape=LIKE_SHAPE, text=like_text),
                       progress=lambda m: print(f"like: {m}", flush=True))
        write_json(made_from, source)
    params = yaml.safe_load((clone / "params.yaml").read_text())
    if params["prepare"]["input"] != "data/paper_scale/reviews.json.gz":
        text = (clone / "params.yaml").read_text().replace(
            f"input: {params['prepare']['input']}", "input: data/paper_scale/reviews.json.gz", 1)
        (clone / "params.yaml").write_text(text)
    return clone


def follow_committed_code(clone: Path) -> None:
    """Move the clone to this repository's commit where it is behind. A hard reset: the clone's own edits (its
    params.yaml input, dvc.lock, metrics) go back to the commit's and `workspace` sets the input again; the stage
    outputs, ignored by git, stay, and a stage is only run again where this benchmark asks for it (its dvc.lock
    entry no longer matches, so dvc runs it rather than skipping it)."""
    def head(repo: Path) -> str:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, capture_output=True,
                              text=True).stdout.strip()

    wanted = head(ROOT)
    if head(clone) == wanted:
        return
    subprocess.run(["git", "fetch", "-q", str(ROOT), wanted], cwd=clone, check=True)
    subprocess.run(["git", "reset", "-q", "--hard", wanted], cwd=clone, check=True)
    print(f"workspace moved to this checkout's commit {wanted[:7]}", flush=True)


SCALABLE_TRAIN, SCALABLE_EVALUATE = "beside: train bert_rs (solver scalable)", "beside: evaluate scalable and dense"
# run only when named: the test split scored for the runs trained so far, when `--stages` stops short of `evaluate`
EVALUATE_TRAINED = "beside: evaluate the runs trained so far"


def dag_command(stage: str, again: bool = False) -> list[str]:
    """`again`: run it although dvc.lock says its outputs are up to date."""
    return [str(BIN / "dvc"), "repro", "--single-item", *(["--force"] if again else []), stage]


def needed_stages(clone: Path, env: dict, targets: list[str], stages: list[str]) -> list[str]:
    """`targets` and every stage they read from, in `stages` order; a step beside the DAG needs dense bert_rs
    (and the evaluation step the scalable run it trains)."""
    unknown = [t for t in targets if t not in stages]
    if unknown:
        raise SystemExit(f"--stages: no stage named {', '.join(unknown)}; the stages are: {', '.join(stages)}")
    needed = set()
    for target in targets:
        if target == EVALUATE_TRAINED:  # reads whatever runs the workspace holds
            needed.add(target)
            continue
        if stage_part(target) == "beside the DAG":
            needed |= {SCALABLE_TRAIN, target}
            target = "train_text@bert_rs"
        graph = subprocess.run([str(BIN / "dvc"), "dag", "--dot", target], cwd=clone, env=env, check=True,
                               capture_output=True, text=True).stdout
        needed |= set(re.findall(r'^"([^"]+)";$', graph, flags=re.MULTILINE)) | {target}
    return [stage for stage in stages if stage in needed]


def earlier_results(out: Path) -> dict:
    """The results file an earlier run wrote (the ledger of what this workspace may no longer hold), or {}."""
    results = out / "paper_scale.json"
    return json.loads(results.read_text()) if results.is_file() else {}


def earlier_rows(out: Path, stages: list[str]) -> dict[str, dict]:
    """The stages an earlier run recorded in the results file (kept until measured again)."""
    recorded = earlier_results(out)
    if not recorded:
        return {}
    fallback_date = f"on or before {recorded.get('meta', {}).get('date')}"
    return {stage: {"date": fallback_date, **row} for stage, row in recorded.get("stages", {}).items()
            if stage in stages}


def scalable_beside_dense(clone: Path, work: Path) -> dict[str, list[str]]:
    """The steps that train bert_rs with the scalable solver on the DAG's own prepared data and embedding cache,
    and evaluate it beside the DAG's dense bert_rs (hard links, not copies, of the dense run's files)."""
    side = work / "scalable"
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["models"]["bert_rs"]["solver"] = "scalable"
    params["models"]["bert_rs"].pop("dense", None)  # the dense grids: a fixed scalable solver refuses them
    side.mkdir(parents=True, exist_ok=True)
    (side / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cache = clone / "data" / "embeddings" / params["text_runs"]["bert_rs"]["embeddings"]
    dense, linked = clone / "data" / "models" / "bert_rs", side / "models" / "bert_rs"
    if dense.is_dir():
        shutil.rmtree(linked, ignore_errors=True)
        linked.mkdir(parents=True)
        for file in dense.iterdir():
            os.link(file, linked / file.name)
    bertrs = str(BIN / "bertrs")
    return {SCALABLE_TRAIN: [bertrs, "train", "--prepared", "data/prepared", "--run", "bert_rs", "--embeddings",
                             str(cache), "--out", str(side / "models" / "bert_rs_scalable"), "--curves",
                             str(side / "curves.csv"), "--params", str(side / "params.yaml"), "--no-progress"],
            SCALABLE_EVALUATE: [bertrs, "evaluate", "--prepared", "data/prepared", "--models", str(side / "models"),
                                "--metrics", str(side / "metrics.json"), "--table", str(side / "comparison.md"),
                                "--plots-dir", str(side / "at_k"), "--params", "params.yaml", "--every-folder"]}


def evaluate_trained_command(work: Path) -> list[str]:
    """The step that scores the test split for every run the workspace has trained so far, into the work folder's
    metrics and table where the DAG's `evaluate` puts its own."""
    return [str(BIN / "bertrs"), "evaluate", "--prepared", "data/prepared", "--models", "data/models", "--metrics",
            str(work / DAG_METRICS), "--table", str(work / DAG_TABLE), "--plots-dir", str(work / "at_k_trained"),
            "--params", "params.yaml", "--every-folder"]


def encoder_pass_flops(clone: Path, encoder_spec: str, max_length: int) -> dict:
    """The floating-point operations of one forward pass of this encoder over every prepared review, truncated as
    `embed` truncates them: FlopCounterMode on one review of each length present, times the reviews of that length
    (padding to a batch's longest review is not counted, so the figure is a lower bound). The reviews are read from
    <clone>/data/prepared."""
    from torch.utils.flop_counter import FlopCounterMode

    from pipeline.data.prepared import load_reviews
    from pipeline.text.encode import load_encoder
    from pipeline.text.encoders import resolve_encoder

    encoder = load_encoder(resolve_encoder(encoder_spec), pooling="mean", max_length=max_length)
    encoder.model.set_attn_implementation("eager")  # the same arithmetic; the counter does not see CPU SDPA's kernel
    texts = [t or "" for t in load_reviews(clone / "data" / "prepared", ["text"]).column("text").to_pylist()]
    ids = encoder.tokenizer(texts, truncation=True, max_length=encoder.max_length)["input_ids"]
    reviews_of_length = np.bincount([len(t) for t in ids])
    flops = 0
    with torch.inference_mode():
        for length in np.flatnonzero(reviews_of_length):
            with FlopCounterMode(display=False) as counter:
                encoder.model(input_ids=torch.ones(1, int(length), dtype=torch.long))
            flops += counter.get_total_flops() * int(reviews_of_length[length])
    return {"flops": float(flops), "reviews": len(texts), "max_length": encoder.max_length,
            "tokens": int((np.arange(len(reviews_of_length)) * reviews_of_length).sum())}


def matmul_gflops(side: int = MATMUL_SIDE, repeats: int = 5) -> float:
    """This machine's fastest fp32 dense matrix product on all its cores, in GFLOP/s: the rate an encoder layer
    (matrix products, plus element-wise work that only lowers it) cannot exceed."""
    a, b = torch.randn(side, side), torch.randn(side, side)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * side**3 / best / 1e9


def stage_one_floor(clone: Path) -> dict:
    """The least time the DAG's encoder passes can take on this machine (see the module docstring)."""
    params = yaml.safe_load((clone / "params.yaml").read_text())
    embed = params["embed"]
    passes = [*embed.get("shared_passes", {}), *embed.get("single_passes", [])]
    per_spec: dict[str, dict] = {}
    for name in passes:
        spec = params["encoders"][name]["model"]
        if spec not in per_spec:
            print(f"{time.strftime('%H:%M:%S')} counting the arithmetic of {spec} ...", flush=True)
            per_spec[spec] = encoder_pass_flops(clone, spec, embed["max_length"])
    rate = matmul_gflops()
    flops = sum(per_spec[params["encoders"][name]["model"]]["flops"] for name in passes)
    return {"date": date.today().isoformat(), "threads": torch.get_num_threads(), "matmul_gflops": rate,
            "passes": passes, "per_encoder": per_spec, "flops": flops, "minutes": flops / (rate * 1e9) / 60}


def floor_lines(floor: dict | None, done: dict) -> list[str]:
    """The floor beside the measured encoder passes and what the target would leave stage two."""
    if not floor:
        return []
    one = next(iter(floor["per_encoder"].values()))
    embeds = [s for s in done if s.split("@")[0] in ("embed", "embed_shared")]
    measured = sum(done[s]["seconds"] for s in embeds) / 60
    stage_two = [r for s, r in done.items() if stage_part(s) == "stage two"]
    lines = ["## Stage one's arithmetic floor on this machine", "",
             f"{floor['date']}, `python benchmarks/paper_scale.py --floor`. One encoder pass over the "
             f"{one['reviews']:,} prepared reviews ({one['tokens']:,} tokens after truncation at {one['max_length']}) "
             f"is {one['flops'] / 1e12:.1f} TFLOP (FlopCounterMode; padding not counted). This machine's fastest "
             f"fp32 matrix product runs at {floor['matmul_gflops']:.0f} GFLOP/s on {floor['threads']} threads. The "
             f"DAG makes {len(floor['passes'])} passes ({', '.join(floor['passes'])}), so stage one cannot take less "
             f"than **{floor['minutes']:.1f} min** here, at that peak throughout."]
    if embeds:
        lines[-1] += (f" Measured, the stages that make them ({', '.join(embeds)}; tokenising, writing shards and "
                      f"building profiles and the index included) took {measured:.1f} wall min: "
                      f"{floor['minutes'] / measured:.0%} of that peak.")
    if stage_two:
        left = TARGETS["minutes"] - floor["minutes"]
        wall = sum(r["seconds"] for r in stage_two) / 60
        lines[-1] += (f" With stage one at its floor, the {TARGETS['minutes']}-minute target would leave stage two's "
                      f"{len(stage_two)} stages {left:.1f} min, where they measured {wall:.0f} wall min "
                      f"({sum(r.get('cpu_seconds') or 0 for r in stage_two) / 60:.0f} CPU min): "
                      f"{wall / left:.0f} times as long. On this machine the target is out of reach with the DAG as it "
                      "stands (every encoder pass, fp32, these truncation lengths); the same commands run on more "
                      "cores and on GPUs (docs/scale.md).")
    return lines + [""]


def run_step(clone: Path, name: str, command: list[str], env: dict, log: Path) -> tuple[float, float, float]:
    """One command in the clone; (wall seconds, CPU seconds of its process tree, peak GiB)."""
    try:
        run = run_measured(command, cwd=clone, env=env, log=log, interval=0.2)
    except RuntimeError as error:
        raise SystemExit(f"{name}: {error}") from None
    return run.seconds, run.cpu_seconds, run.peak_gb


def code_version(clone: Path) -> str:
    """The clone's commit, and the code paths that differ from it (a later commit's stage-two code checked out into
    a clone whose stage one had already run)."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=clone, capture_output=True, text=True).stdout
    changed = subprocess.run(["git", "diff", "--name-only", "HEAD", "--", "pipeline", "stages"], cwd=clone,
                             capture_output=True, text=True).stdout.split()
    return head.strip() + (f" with {', '.join(changed)} changed" if changed else "")


def stage_part(stage: str) -> str:
    if stage.startswith("beside:"):
        return "beside the DAG"
    return "stage one" if stage.split("@")[0] in ("prepare", "finetune", "embed", "embed_shared") else "stage two"


def run_note(clone: Path, stage: str) -> str:
    """Which solver a bert_rs run used (`auto` picks dense only while its estimate fits the memory available at the
    start, so a run that shared the machine may have switched) and, for a dense solve, the memory estimate that
    decides it (pipeline/ranking/training/memory.py, beside the measured peak) and what its search chose; for the
    scalable solver the passes kept and scored; or the epoch a neural run chose."""
    run_file = clone / "data" / "models" / stage.partition("@")[2] / "run.json"
    if stage == SCALABLE_TRAIN:
        run_file = clone.parent / "scalable" / "models" / "bert_rs_scalable" / "run.json"
    if not stage.startswith(("train", SCALABLE_TRAIN)) or not run_file.is_file():
        return ""
    run = json.loads(run_file.read_text())
    model, solver = run["spec"]["model"], run.get("bert_rs_solver")
    chosen, selection = run.get("chosen") or {}, run.get("selection") or {}
    notes = [f"solver {solver}"] if solver else []
    if model in ("ease", "bert_rs") and (solver or "dense") == "dense":
        dense = RankingConfig().override("bert_rs", solver="dense")
        estimate = fit_memory(model, Shape(run["n_users"], run["n_items"], 0, run.get("dim") or 0), dense)[0] / GB
        notes.append(f"memory estimate {estimate:.1f} GB")
    if model == "bert_rs" and "text_match" in chosen and (solver or "dense") == "dense":
        notes.append(f"chose lambda {chosen['ease_lambda']:g}, side weight {chosen['side_weight']:g}, "
                     f"{chosen['regulariser']}, {chosen['text_match']} w {chosen['text_weight']:g}, popularity "
                     f"{chosen['pop_weight']:g}; validation NDCG@10 {selection.get('valid_ndcg@10')}, cross-fitted "
                     f"gain {selection.get('cross_fitted_gain')}")
    if solver == "scalable" and "epochs" in chosen:
        notes.append(f"passes kept {chosen['epochs']} of {chosen['epochs_scored_on_validation']} scored on "
                     "validation")
    if notes:
        return "; ".join(notes)
    return f"best epoch on validation {run['best_epoch']}" if run.get("best_epoch") else ""


def scalable_table(work: Path) -> list[str]:
    """bert_rs dense and scalable on the test split, from the step beside the DAG."""
    metrics_file = work / "scalable" / "metrics.json"
    if not metrics_file.is_file():
        return []
    metrics = json.loads(metrics_file.read_text())
    lines = ["## The scalable solver beside dense bert_rs (test split)", "",
             "Both trained on the DAG's prepared data and embedding cache, the scalable one with "
             "`models.bert_rs.solver: scalable` and every other setting the default.", "",
             "| run | full HR@10 | full NDCG@10 | sampled HR@10 | sampled NDCG@10 |", "|---|---|---|---|---|"]
    for run in ("bert_rs", "bert_rs_scalable"):
        if run in metrics:
            full, sampled = metrics[run]["full"], metrics[run]["sampled"]
            lines.append(f"| {run} | {full['hr@10']:.4f} | {full['ndcg@10']:.4f} | {sampled['hr@10']:.4f} | "
                         f"{sampled['ndcg@10']:.4f} |")
    if "bert_rs" in metrics and "bert_rs_scalable" in metrics:
        dense, scalable = metrics["bert_rs"]["full"]["ndcg@10"], metrics["bert_rs_scalable"]["full"]["ndcg@10"]
        lines += ["", f"Full-ranking NDCG@10 of the scalable solver relative to dense: {scalable / dense - 1:+.1%}."]
    return lines + [""]


def search_profile_lines(path: Path) -> list[str]:
    """Where the dense bert_rs stage's minutes go, from benchmarks/search_profile.py's results beside this file."""
    if not path.is_file():
        return []
    profile = json.loads(path.read_text())
    default = RankingConfig().train.search_precision  # with both precisions profiled, the default's run
    run = profile["runs"].get("screened") or profile["runs"].get(f"screened {default}") or next(
        iter(profile["runs"].values()))
    meta, total = profile["meta"], run["total_seconds"]
    lines = ["## Where the dense bert_rs stage's minutes go", "",
             f"{meta['date']}, code {meta.get('code', 'not recorded')}, `{meta['command']}` (load average "
             f"{meta['load_average_start'][0]:.2f} at the start, {meta['load_average_end'][0]:.2f} at the end): the "
             f"stage's steps timed in one process, on this workspace's prepared data and gram stage, random profiles "
             f"of the same width. Whole stage {total / 60:.1f} min, of which the validation search "
             f"{run['search_seconds'] / 60:.1f}; peak RSS {run['peak_gb']} GB.", "",
             "| step | minutes | share | calls |", "|---|---|---|---|"]
    for step, seconds in sorted(run["steps_seconds"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {step} | {seconds / 60:.1f} | {seconds / total:.0%} | {run['calls'].get(step, '')} |")
    return lines + [""]


def report(clone: Path, stages: list[str], done: dict, out: Path, floor: dict | None = None,
           like: Path | None = None, like_text: str = "real") -> None:
    stats_file = clone / "data" / "prepared" / "stats.json"
    table1 = json.loads(stats_file.read_text())["table1"] if stats_file.is_file() else None
    totals = {part: sum(r["seconds"] for s, r in done.items() if stage_part(s) == part)
              for part in ("stage one", "stage two")}
    wanted = [stage for stage in stages if stage != EVALUATE_TRAINED]  # what a complete run measures
    pending = [stage for stage in wanted if stage not in done]
    peak = max((r["peak_gb"] for s, r in done.items() if stage_part(s) != "beside the DAG"), default=None)
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    shown = like.relative_to(ROOT) if like is not None and like.is_relative_to(ROOT) else like
    command = ("python benchmarks/paper_scale.py" + (f" --like {shown}" if like else "")
               + (f" --like-text {like_text}" if like and like_text != "real" else ""))
    meta = {"date": date.today().isoformat(), "machine": f"{platform.node()} ({os.cpu_count()} CPUs, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB{gpu})", "command": command,
            "load_average": os.getloadavg(), "complete": not pending}
    write_json(out / "paper_scale.json", {"meta": meta, "prepared": table1, "stages": done,
                                          "pending": pending, "totals": totals,
                                          "floor": floor})
    lines = ["# The whole DAG at the paper's size", "",
             f"{meta['date']}, {meta['machine']}, `{meta['command']}` (resumable; see its docstring for the data). "
             f"Targets (issue: the paper's size in about an hour on 2 cores): the DAG end to end in "
             f"<= {TARGETS['minutes']} min and <= {TARGETS['peak_gb']} GB peak, stage two in "
             f"<= {TARGETS['stage_two_minutes']} min, the dense bert_rs stage in "
             f"<= {TARGETS['dense_bert_rs_minutes']} min.", ""]
    if table1:
        lines += [f"Prepared: {table1['users']:,} users, {table1['items']:,} items, {table1['reviews']:,} reviews "
                  f"(the paper: {PAPER['users']:,}, {PAPER['items']:,}, {PAPER['reviews']:,}).", ""]
    metrics_file = clone.parent / DAG_METRICS  # the clone's own is the bundled sample's again after a move
    evaluations = [done[step] for step in ("evaluate", EVALUATE_TRAINED) if step in done]
    metrics = json.loads(metrics_file.read_text()) if evaluations and metrics_file.is_file() else {}
    evaluated_at = max((row.get("finished_at", 0.0) for row in evaluations), default=0.0)
    lines += ["| stage | wall minutes | CPU minutes | peak RSS (GB) | test NDCG@10 (full) | note |",
              "|---|---|---|---|---|---|"]
    for stage in stages:
        row = done.get(stage)
        if not row and stage == EVALUATE_TRAINED:
            continue
        if not row:
            lines.append(f"| {stage} | not run yet | | | | |")
            continue
        fresh = row.get("finished_at", 0.0) <= evaluated_at  # not re-trained since the test split was scored
        run = metrics.get(stage.partition("@")[2]) if stage.startswith("train") and fresh else None
        ndcg = f"{run['full']['ndcg@10']:.4f}" if run else ""
        cpu = f"{row['cpu_seconds'] / 60:.1f}" if row.get("cpu_seconds") is not None else "not recorded"
        note = "; ".join(filter(None, ["resumed after an interruption: the times cover the last run only"
                                       if row.get("resumed") else "", run_note(clone, stage)]))
        lines.append(f"| {stage} | {row['seconds'] / 60:.1f} | {cpu} | {row['peak_gb']:.2f} | {ndcg} | {note} |")
    lines += ["", f"Stage one {totals['stage one'] / 60:.1f} min, stage two {totals['stage two'] / 60:.1f} min over "
              f"the DAG's stages run (the steps beside it not counted); peak {peak:.2f} GB."
              if peak is not None else "Nothing run yet.",
              "" if meta["complete"] else f"Incomplete: {len(pending)} of {len(wanted)} stages not run "
              "yet; rerun the command to resume, or name a few with `--stages`.", ""]
    codes: dict[str, list[str]] = {}
    for stage, row in done.items():
        codes.setdefault(f"{row.get('date', 'undated')}, {row.get('code', 'code not recorded')}", []).append(stage)
    if len(codes) > 1:
        lines += ["When each stage was measured and the code it ran with (the clone's commit; later fixes checked "
                  "out into it between stages):", ""]
        lines += [f"- {code}: {', '.join(names)}" for code, names in codes.items()] + [""]
    lines += floor_lines(floor, done)
    lines += search_profile_lines(out / "search_profile.json")
    lines += scalable_table(clone.parent)
    comparison = clone.parent / DAG_TABLE
    if all(stage in done for stage in stages if stage_part(stage) != "beside the DAG") and comparison.is_file():
        lines += ["## The comparison table the DAG produced", "", comparison.read_text()]
    (out / "paper_scale.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a `kill` stops the stage being measured as well
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=None, help="the workspace (default build/paper_scale, or "
                                                     "build/paper_scale_like[_planted] with --like)")
    parser.add_argument("--out", default=None, help="where the results go (default benchmarks/results, or "
                                                    "benchmarks/results/paper_scale_like[_planted] with --like)")
    parser.add_argument("--like", default=None, metavar="PREPARED",
                        help="generate the data like this prepared set at LIKE_SHAPE (see the docstring)")
    parser.add_argument("--like-text", choices=TEXTS, default="real",
                        help="with --like: the generated reviews' words (pipeline/data/likeness.py)")
    parser.add_argument("--fresh", action="store_true", help="delete --work and start over")
    parser.add_argument("--stages", nargs="+", metavar="STAGE",
                        help="run these stages and the stages they read from only (default: every stage)")
    parser.add_argument("--again", action="store_true",
                        help="measure the --stages named again, although this workspace has measured them")
    parser.add_argument("--floor", action="store_true",
                        help="measure stage one's arithmetic floor on this machine (a few minutes; kept until "
                             "measured again)")
    args = parser.parse_args()
    if args.again and not args.stages:
        parser.error("--again measures the stages named by --stages again; name them")
    like = Path(args.like).resolve() if args.like else None
    if args.like_text != "real" and like is None:
        parser.error("--like-text applies with --like")
    suffix = "_planted" if args.like_text == "planted" else ""
    work = Path(args.work or ROOT / "build" / (f"paper_scale_like{suffix}" if like else "paper_scale"))
    out = Path(args.out or (RESULTS / f"paper_scale_like{suffix}" if like else RESULTS))
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    clone = workspace(work, like, args.like_text)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{BIN}:{os.environ['PATH']}"}
    listing = subprocess.run([str(BIN / "dvc"), "stage", "list", "--name-only"], cwd=clone, env=env, check=True,
                             capture_output=True, text=True)
    stages = listing.stdout.split() + [SCALABLE_TRAIN, SCALABLE_EVALUATE, EVALUATE_TRAINED]
    to_run = needed_stages(clone, env, args.stages, stages) if args.stages else [
        stage for stage in stages if stage != EVALUATE_TRAINED]
    measured = Ledger(work / "stages.jsonl")  # one row per stage measured in this workspace
    begun = Ledger(work / "started.jsonl")    # stages begun here: one begun but not measured was interrupted
    done = {**earlier_rows(out, stages), **measured.rows}
    floor = earlier_results(out).get("floor")  # stage one's floor, kept until measured again
    beside: dict[str, list[str]] = {}  # set up when the first scalable step starts (dense bert_rs exists)
    again = set(args.stages) if args.again else set()
    for stage in to_run:
        if stage in measured.rows and stage not in again:
            continue
        resumed = stage in begun.rows and stage not in measured.rows
        begun.put(stage, {"at": time.time()})
        print(f"{time.strftime('%H:%M:%S')} {stage} ...", flush=True)
        if stage == EVALUATE_TRAINED:
            command = evaluate_trained_command(work)
        elif stage_part(stage) == "beside the DAG":
            beside = beside or scalable_beside_dense(clone, work)
            command = beside[stage]
        else:
            command = dag_command(stage, stage in again)

        seconds, cpu, peak = run_step(clone, stage, command, env, work / "dvc.log")
        done[stage] = row = {"seconds": seconds, "cpu_seconds": cpu, "peak_gb": peak, "resumed": resumed,
                             "load_average": os.getloadavg(), "code": code_version(clone),
                             "date": date.today().isoformat(), "finished_at": time.time()}
        measured.put(stage, row)
        if stage == "evaluate":
            shutil.copyfile(clone / "reports" / "comparison.md", work / DAG_TABLE)
            shutil.copyfile(clone / "metrics.json", work / DAG_METRICS)
        print(f"{time.strftime('%H:%M:%S')} {stage}: {row['seconds'] / 60:.1f} min, peak {row['peak_gb']:.2f} GB",
              flush=True)
        report(clone, stages, done, out, floor, like, args.like_text)
    if args.floor:
        floor = stage_one_floor(clone)
    report(clone, stages, done, out, floor, like, args.like_text)


if __name__ == "__main__":
    main()
