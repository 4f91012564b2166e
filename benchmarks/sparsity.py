"""Sparsity sweep: does review text help more as training data thins out?

    python benchmarks/sparsity.py                                   # every dataset found
    python benchmarks/sparsity.py --datasets digital_music --levels 100% cap1   # a look

For each dataset (leave-one-out, params.yaml's prepare settings), every user's training interactions are thinned
(keep 100%, 50%, 25% of them, or at most 3, 2, 1; at least one is always kept, seeded), validation and test stay
as they are. Profiles are re-pooled from the cached review vectors of the *kept* training reviews only (mean pooling,
packaged MiniLM, encoded once per dataset). At each level, each model chooses its settings on validation
(full-ranking NDCG@10) and is reported on test (full-ranking NDCG@10, overall and for users with 1-3 training
interactions), after its final fit (`train.refit_with_validation`, the default): the chosen settings fitted once more
on the kept training pairs plus the validation pairs, so every model scores test from the same history:

- pop: most popular;
- ease: EASE with lambda searched over a log grid on validation (the count of validation looks is printed beside
  bert_rs's, so a gain cannot come from a bigger search alone);
- neumf: NeuMF (He et al. 2017) with params.yaml's train settings and a small epoch budget;
- text: the text-only match cos(b_u - mu_u, b_i - mu_i) of the kept-review profiles;
- bert_rs: the default (params.yaml's grids, choice rule and guard); bert_rs_unguarded: the same search keeping the
  choice rule alone (train.guard_additions: false), so the guard's effect is measured at every point.

The shared sets are read from ../shared/data (or $BERTRS_SHARED_DATA). Writes
benchmarks/results/sparsity.{md,json,png}; work lives under build/sparsity/ (prepared data, caches, one JSON
line per (dataset, level, model)), so a rerun resumes where an interrupted one stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import DATASETS, Ledger, ledger_file, review_times, with_refit  # noqa: E402
from pipeline.config import PACKAGED_ENCODER, Params, RunSpec, load_params  # noqa: E402
from pipeline.data.prepare import prepare_dataset  # noqa: E402
from pipeline.data.prepared import Interactions, PreparedData, load_prepared  # noqa: E402
from pipeline.embeddings.build import build_cache  # noqa: E402
from pipeline.embeddings.cache import Profiles, load_review_embeddings, read_meta  # noqa: E402
from pipeline.embeddings.profiles import mean_profiles  # noqa: E402
from pipeline.io import atomic_path, write_json  # noqa: E402
from pipeline.ranking.models.baselines import EASE, EigenGram  # noqa: E402
from pipeline.ranking.protocol import Scorer  # noqa: E402
from pipeline.ranking.evaluation.evaluate import evaluate  # noqa: E402
from pipeline.ranking.models.review_ease import ReviewAwareEASE, centred_units  # noqa: E402
from pipeline.ranking.training.lagged import profiles_lag_history  # noqa: E402
from pipeline.ranking.selection.choice import Choice  # noqa: E402
from pipeline.ranking.selection.select import ValidationLooks, keep_best, select  # noqa: E402
from pipeline.ranking.training.train import refit_with_validation, train, with_validation_in_training  # noqa: E402

DEFAULT_DATASETS = ("digital_music", "gift_cards", "all_beauty")
LEVELS = {"100%": 1.0, "50%": 0.5, "25%": 0.25, "cap3": 3, "cap2": 2, "cap1": 1}  # share kept, or a per-user cap
MODELS = ("pop", "ease", "neumf", "text", "bert_rs", "bert_rs_unguarded")
TEXT_MODELS = ("text", "bert_rs", "bert_rs_unguarded")  # the rows that read review vectors
EASE_LAMBDAS = tuple(float(x) for x in np.geomspace(1.0, 1e5, 90))
NEUMF_EPOCHS = 15
ENCODER = "minilm_mean"


def log(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


# ---------------------------------------------------------------------------------------------------- data


def prepared_for(work: Path, dataset: str, params: Params) -> PreparedData:
    out = work / dataset / "prepared"
    if not (out / "stats.json").is_file():
        config = dataclasses.replace(params.prepare, protocol="leave_one_out", input=[str(DATASETS[dataset])])
        prepare_dataset(config, config.input, out)
    return load_prepared(out)


def cache_for(work: Path, dataset: str, params: Params, data: PreparedData) -> Path:
    """One mean-pooled packaged-MiniLM cache per dataset; thinned levels re-pool its vectors."""
    cache = work / dataset / "embeddings" / ENCODER
    if not (cache / "meta.json").is_file():
        # fp32: bf16 is slower without native CPU support
        config = dataclasses.replace(params.embed_for(ENCODER), pooling="mean")
        build_cache(data.root, PACKAGED_ENCODER, ENCODER, config, cache)
    return cache


def thin(data: PreparedData, level: float | int, seed: int = 0) -> PreparedData:
    """Keep a share (float) or at most a count (int) of each user's training pairs, at least one, chosen at random
    (seeded); validation, test and their candidates are untouched."""
    if isinstance(level, float) and level >= 1.0:
        return data
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.train.users))
    users, items = data.train.users[order], data.train.items[order]
    by_user = np.argsort(users, kind="stable")
    users, items = users[by_user], items[by_user]
    first = np.searchsorted(users, users, side="left")
    position = np.arange(len(users)) - first  # 0-based position of each pair among its user's (shuffled) pairs
    counts = np.bincount(users, minlength=data.n_users)[users]
    quota = np.maximum(1, np.ceil(counts * level)) if isinstance(level, float) else np.minimum(counts, level)
    keep = position < quota
    train = Interactions(users[keep], items[keep])
    return dataclasses.replace(data, train=train, fingerprint=f"{data.fingerprint}-thin{level}")


def thinned_profiles(table, vectors: np.ndarray, data: PreparedData, meta: dict, lagged: bool) -> Profiles:
    """Mean profiles of the training reviews whose (user, item) pair survived thinning; `lagged`: with the view
    one review behind that bert_rs chooses with under the final fit (pipeline/ranking/training/lagged.py)."""
    users, items = table.column("user_idx").to_numpy(), table.column("item_idx").to_numpy()
    kept = set(zip(data.train.users.tolist(), data.train.items.tolist()))
    is_train = table.column("split").to_numpy(zero_copy_only=False) == "train"
    keep = np.array([t and (u, i) in kept for t, u, i in zip(is_train, users.tolist(), items.tolist())])
    tables = mean_profiles(users, items, np.where(keep, "train", "dropped"), vectors, data.n_users, data.n_items,
                           times=review_times(table, data), lagged=lagged)
    return Profiles.from_tables(tables, {**meta, "profile": f"mean-thinned-{len(data.train.users)}"})


# ---------------------------------------------------------------------------------------------------- models


class TextMatch(Scorer):
    """Text alone: cos of the centred user and item profiles."""

    def __init__(self, profiles: Profiles) -> None:
        super().__init__()
        self.register_buffer("u", centred_units(profiles.users))
        self.register_buffer("i", centred_units(profiles.items))

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.u[users] @ self.i.T

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return (self.u[users] * self.i[items]).sum(-1)


def tuned_ease(data: PreparedData) -> tuple[EASE, Choice]:
    """EASE with lambda chosen on validation from EASE_LAMBDAS (one eigendecomposition serves all of them)."""
    model = EASE(data.n_users, data.n_items).fit(data.train.users, data.train.items)
    looks = ValidationLooks(data, "valid")
    eig = EigenGram(model.gram())
    x = model.rows(torch.as_tensor(looks.users)).double()
    x_v = x @ eig.v
    choice = keep_best((lam, looks.ndcg(eig.ease_scores(x, x_v, lam))) for lam in EASE_LAMBDAS)
    best = choice.setting
    model.ease_lambda = best
    model.B = eig.ease_weights(best)
    return model, choice


def fit(name: str, data: PreparedData, profiles: Profiles, params: Params
        ) -> tuple[nn.Module, dict, Callable[[], nn.Module]]:
    """The model as chosen on validation (fitted on the kept training pairs), its choices, and its final fit: the
    same choices fitted on kept training + validation pairs, as `train.refit_with_validation` does for
    `bertrs train`."""
    both = with_validation_in_training(data)
    chosen_only = params.ranking.override(refit_with_validation=False)  # the final fit comes after validation is read
    if name in ("pop", "neumf"):
        spec = RunSpec(model=name)
        config = chosen_only.override("neumf", epochs=NEUMF_EPOCHS, patience=4) if name == "neumf" else chosen_only
        result = train(spec, config, data, None, progress=False)
        return result.model, {}, lambda: refit_with_validation(result, spec, config, data, progress=False).model
    if name == "ease":
        model, choice = tuned_ease(data)
        return (model, {"ease_lambda": choice.setting, "validation_looks": choice.looks},
                lambda: model.refit(both.train.users, both.train.items, choice))
    if name == "text":
        return TextMatch(profiles), {}, lambda: TextMatch(profiles)  # profiles only: nothing learned from pairs
    model = ReviewAwareEASE.from_config(data.n_users, data.n_items, profiles, params.models.bert_rs)
    if profiles.lagged is not None:  # chosen as test will read the profiles, as `bertrs train` does
        model.use_profiles(profiles.lagged)
    model.use_search_precision(getattr(torch, params.ranking.train.search_precision))  # as `bertrs train` does
    guard = params.ranking.train.guard_additions and name == "bert_rs"  # bert_rs_unguarded: the rule alone
    choice = select(model.fit(data.train.users, data.train.items), data, params.ranking.train.choice_rule, guard,
                    params.ranking.train.seed, screen=params.ranking.train.screen_search)

    def final_fit() -> nn.Module:
        model.use_profiles(profiles)
        return model.refit(both.train.users, both.train.items, choice)

    return model, {**model.choices(), "selection": choice.summary()}, final_fit


def measure(name: str, data: PreparedData, profiles: Profiles, params: Params) -> dict:
    start = time.time()
    model, choices, final_fit = fit(name, data, profiles, params)
    valid = evaluate(model, data, "valid", ks=[10], protocols=["full"])  # before the final fit learns these pairs
    if params.ranking.train.refit_with_validation:
        model = final_fit()
    test = evaluate(model, data, "test", ks=[10], protocols=["full"])
    return {"valid_ndcg@10": valid["full"]["ndcg@10"], "test_ndcg@10": test["full"]["ndcg@10"],
            "test_buckets": {b: m["ndcg@10"] for b, m in test["buckets"]["full"].items()},
            "test_bucket_n": {b: m["n"] for b, m in test["buckets"]["full"].items()},
            "choices": choices, "seconds": round(time.time() - start, 1)}


# ---------------------------------------------------------------------------------------------------- report


def write_report(results: dict, out: Path, refit_with_validation: bool) -> None:
    meta = {"date": date.today().isoformat(), "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
            "python": platform.python_version(), "torch": torch.__version__,
            "command": "python benchmarks/sparsity.py " + " ".join(sys.argv[1:]),
            "refit_with_validation": refit_with_validation}
    write_json(out / "sparsity.json", {"meta": meta, "results": results})
    lines = ["# Sparsity sweep: full-ranking NDCG@10 on test as training data thins", "",
             f"{meta['date']}, {meta['machine']}, `{meta['command']}`. Leave-one-out; each user's training "
             "interactions thinned (share kept or per-user cap, at least one), validation and test unchanged; "
             "profiles from kept training reviews only; every choice on validation"
             + ("; then every model is fitted once more at its choices on the kept training pairs + the validation "
                "pairs (train.refit_with_validation), so test is scored from that history (train/user counts the "
                "kept training pairs only); bert_rs chooses with user profiles one review behind (each user's "
                "newest kept training review left out), as test reads them." if refit_with_validation else
                "; test scored from the kept training "
                "pairs alone."), ""]
    for dataset, levels in results.items():
        lines += [f"## {dataset}", "", "| level | train/user | " + " | ".join(MODELS)
                  + " | bert_rs vs best non-text | bert_rs 1-3 vs best non-text 1-3 | bert_rs choices |",
                  "|" + "---|" * (len(MODELS) + 5)]
        for level, row in levels.items():
            models = row["models"]
            cells = " | ".join(f"{models[m]['test_ndcg@10']:.4f}" if m in models else "not run" for m in MODELS)
            non_text = [m for m in ("pop", "ease", "neumf") if m in models]
            if "bert_rs" not in models or not non_text:
                lines.append(f"| {level} | {row['train_per_user']:.2f} | {cells} | | | |")
                continue
            best = max(non_text, key=lambda m: models[m]["valid_ndcg@10"])  # chosen on validation
            gain = models["bert_rs"]["test_ndcg@10"] / max(models[best]["test_ndcg@10"], 1e-12) - 1
            sparse = {m: models[m]["test_buckets"].get("1-3") for m in models}
            sparse_gain = (f"{sparse['bert_rs'] / sparse[best] - 1:+.1%}" if sparse[best] else "n/a")
            lines.append(f"| {level} | {row['train_per_user']:.2f} | {cells} | {gain:+.1%} (vs {best}) | "
                         f"{sparse_gain} | `{models['bert_rs']['choices']}` |")
        lines += ["", f"EASE searched {len(EASE_LAMBDAS)} lambdas (validation looks); bert_rs's looks are in its "
                  "choices.", ""]
    lines += ["![NDCG@10 vs training density](sparsity.png)", ""]
    with atomic_path(out / "sparsity.md") as tmp:
        Path(tmp).write_text("\n".join(lines))
    plot(results, out / "sparsity.png")


def plot(results: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise SystemExit("the sparsity figure needs matplotlib: pip install -e '.[bench]'") from err
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, (dataset, levels) in zip(axes[0], results.items()):
        for model in MODELS:
            points = [(row["train_per_user"], row["models"][model]["test_ndcg@10"]) for row in levels.values()
                      if model in row["models"]]
            if points:
                ax.plot(*zip(*sorted(points)), marker="o", label=model, linewidth=2.5 if model == "bert_rs" else 1.2)
        ax.set_xscale("log")
        ax.set_xlabel("training interactions per user")
        ax.set_ylabel("test NDCG@10 (full ranking)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS), choices=list(DATASETS))
    parser.add_argument("--levels", nargs="+", default=list(LEVELS), choices=list(LEVELS))
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                        help="a subset runs only those (the report needs all; a later full run resumes)")
    parser.add_argument("--report-only", action="store_true", help="write the report from finished runs only")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--work", default=str(REPO / "build" / "sparsity"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--no-refit", action="store_true", help="score test from the fit to the kept training pairs "
                        "alone (train.refit_with_validation: false), for the comparison of the two protocols")
    args = parser.parse_args()
    params, work, out = with_refit(load_params(args.params), not args.no_refit), Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(ledger_file(work, params.ranking.train.refit_with_validation))
    results: dict = {}
    for dataset in args.datasets:
        if not DATASETS[dataset].is_file():
            log(f"{dataset}: {DATASETS[dataset]} not found, skipped")
            continue
        if args.report_only and not any(key.startswith(f"{dataset}|") for key in ledger.rows):
            continue
        data = prepared_for(work, dataset, params)
        needs_text = bool(set(args.models) & set(TEXT_MODELS)) and not args.report_only
        if needs_text:
            cache = cache_for(work, dataset, params, data)
            table, vectors = load_review_embeddings(cache, data_fingerprint=data.fingerprint)
            meta = read_meta(cache)
        results[dataset] = {}
        for level in args.levels:
            thinned = thin(data, LEVELS[level])
            lags = profiles_lag_history(thinned, params.ranking.train)
            profiles = thinned_profiles(table, vectors, thinned, meta, lags) if needs_text else None
            row = {"train_per_user": len(thinned.train.users) / len(np.unique(thinned.train.users)),
                   "train_pairs": len(thinned.train.users), "models": {}}
            for name in args.models:
                if args.report_only:
                    if f"{dataset}|{level}|{name}" in ledger.rows:
                        row["models"][name] = ledger.rows[f"{dataset}|{level}|{name}"]
                    continue
                row["models"][name] = ledger.get_or_run(f"{dataset}|{level}|{name}",
                                                        lambda: measure(name, thinned, profiles, params))
                m = row["models"][name]
                log(f"{dataset} {level} {name}: valid {m['valid_ndcg@10']:.4f} test {m['test_ndcg@10']:.4f} "
                    f"({m['seconds']}s) {m['choices'] or ''}")
            results[dataset][level] = row
        if set(args.models) == set(MODELS):
            write_report(results, out, params.ranking.train.refit_with_validation)
    if args.report_only:
        write_report(results, out, params.ranking.train.refit_with_validation)


if __name__ == "__main__":
    main()
