"""Fusion-head benchmark: does a learned head (the paper's GMF/MLP/semantic fusion, NeuMF, or a head stacked on the
closed-form scores) beat the closed-form default bert_rs once it gets a tuned NCF's training?

    python benchmarks/fusion_head.py                                  # Digital Music sample, leave-one-out, 2 seeds
    python benchmarks/fusion_head.py --protocols leave_one_out,random
    python benchmarks/fusion_head.py --rows stack_features --seeds 1 --max-configs 1 \\
        --work /tmp/fh --out /tmp/fh/fusion_head                      # a look: does it run end to end?

A first run prepares the sample and embeds its reviews under --work (about 15 min on 2 shared cores); the full
default run then fits for about 25 min more.

Rows (every trainable row gets the same TUNED configurations: 4 negatives per positive, L2 weight decay, larger
factors; the configuration is chosen with seed 1 on validation full-ranking NDCG@10, then retrained with the other
seeds; early stopping on the same metric):

- bert_rs: the closed-form default exactly as params.yaml configures it (its own validation search), the reference;
- neumf, bert_rs_paper, bert_rs_neural (params.yaml's neural form): the learned models, tuned;
- *_as_configured: the same three with params.yaml's training (1 negative), for context;
- stack_features: a logistic head on the default bert_rs's three standardised score parts (item model, text match,
  popularity), nothing else;
- stack_neural: bert_rs_neural's branches plus those three features in one prediction layer, trained end to end.

Each row reads its model's `models.<name>` section of params.yaml with the study's settings laid over it
(`RankingConfig.override`): TRAINING (the same early stopping for every row), then the row's configuration and the
seed. The stack rows train with the `models.bert_rs_neural` section's optimiser settings (learning rate, L2,
negatives, epochs), which stack_neural's branches are built from too.

Stacking without leakage: a training pair's features come from bert_rs refitted WITHOUT that pair. Each user's
training items are dealt into K folds; for fold k, bert_rs (its validation-chosen settings held fixed, no new search)
is fitted on the other folds' pairs, with profiles pooled from the other folds' reviews only, and scores every item;
a training positive of fold k, and the negatives drawn beside it, read fold k's scores. No training pair ever scores
itself, through the interaction matrix, the popularity counts or the review profiles. Validation and test read the
full-training bert_rs's parts. The feature weights start at the default's chosen weights, so an untrained stack
ranks like bert_rs. Every row, bert_rs included, scores test from its fit to the training pairs
(`train.refit_with_validation: false` whatever params.yaml says): the stacked rows' out-of-fold features have no
final-fit form, and a comparison of one row fitted on training + validation pairs against one fitted on training
pairs alone would measure the extra pairs, not the head.

The verdict is decided on VALIDATION: the study's winner is the row with the best validation full-ranking NDCG@10
(seed mean) among bert_rs and the tuned learned rows, ties going to the default. Test numbers are only reported:
each row's seed-mean test NDCG@10 and a paired user bootstrap (95%) of its gain over bert_rs. Work (prepared data,
cache, one JSON line per fit) is kept under build/fusion_head/ (`--work`), so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import Ledger, fixed_choices, review_times, user_bootstrap, with_refit  # noqa: E402
from pipeline.config import Params, RankingConfig, RunSpec, load_params  # noqa: E402
from pipeline.data.prepare import prepare_dataset  # noqa: E402
from pipeline.data.prepared import Interactions, PreparedData, load_prepared  # noqa: E402
from pipeline.embeddings.build import build_caches  # noqa: E402
from pipeline.embeddings.cache import Profiles, load_review_embeddings  # noqa: E402
from pipeline.embeddings.profiles import mean_profiles  # noqa: E402
from pipeline.io import atomic_path, write_json  # noqa: E402
from pipeline.ranking.evaluation.evaluate import full_ranking_mask, rank_full  # noqa: E402
from pipeline.ranking.models.fusion import FusionRanker  # noqa: E402
from pipeline.ranking.models.review_ease import ReviewAwareEASE, standardise  # noqa: E402
from pipeline.ranking.evaluation.metrics import metrics_from_ranks  # noqa: E402
from pipeline.ranking.protocol import Scorer  # noqa: E402
from pipeline.ranking.registry import build_model, load_model_profiles  # noqa: E402
from pipeline.ranking.training.sampling import NegativeSampler  # noqa: E402
from pipeline.ranking.selection.select import SELECTION_METRIC  # noqa: E402
from pipeline.ranking.training.result import valid_metrics  # noqa: E402
from pipeline.ranking.training.train import train  # noqa: E402

ENCODER = "minilm_mean"
SAMPLE = REPO / "data" / "sample"
# The budget every learned row gets: what a tuned NCF is given (4 negatives, L2, larger factors).
TUNED = (
    {"num_negatives": 4, "learning_rate": 3e-3, "factors": 32, "mlp_layers": [128, 64, 32], "weight_decay": 0.0},
    {"num_negatives": 4, "learning_rate": 1e-3, "factors": 64, "mlp_layers": [256, 128, 64], "weight_decay": 1e-5},
    {"num_negatives": 4, "learning_rate": 1e-3, "factors": 64, "mlp_layers": [256, 128, 64], "weight_decay": 1e-4},
)
TRAINING = {"epochs": 50, "patience": 6, "batch_size": 256, "device": "cpu"}  # the same early stopping for every row
NEURAL_FORM = {"semantic_form": "projected", "text_similarity": True, "user_id_dropout": 0.3}
STACK_SECTION = "bert_rs_neural"  # the models.<name> section the stack rows' training reads
FEATURES = ("item_model", "text_match", "popularity")
# In the order they run (the headline comparisons first); `*_as_configured` rows use params.yaml's training, one seed.
ROWS = ("neumf", "bert_rs_neural", "stack_features", "stack_neural", "bert_rs_paper",
        "neumf_as_configured", "bert_rs_neural_as_configured", "bert_rs_paper_as_configured")
CONTEXT = "_as_configured"


def row_config(base: RankingConfig, row: str, overrides: dict, seed: int) -> tuple[str, RankingConfig]:
    """The model whose section a row reads, and the settings it trains with: that section with the neural form
    (bert_rs_neural), the study's TRAINING, the row's configuration and the seed laid over it."""
    model = STACK_SECTION if row.startswith("stack_") else row.removesuffix(CONTEXT)
    form = NEURAL_FORM if model == "bert_rs_neural" else {}
    return model, base.override(model, **form, **TRAINING, **overrides, seed=seed)


# ------------------------------------------------------------------------------------------ out-of-fold features


def assign_folds(users: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Deal each user's training pairs into `n_folds` folds at random (a user with fewer pairs than folds gets
    distinct folds for each). (n_pairs,) -> (n_pairs,) int64 fold of each pair"""
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(users)), users))  # users grouped, shuffled within
    sorted_users = users[order]
    starts = np.searchsorted(sorted_users, sorted_users, side="left")
    folds = np.empty(len(users), dtype=np.int64)
    folds[order] = (np.arange(len(users)) - starts) % n_folds
    return folds


def out_of_fold_features(folds: np.ndarray, n_folds: int,
                         fit_and_score: Callable[[np.ndarray], torch.Tensor]) -> torch.Tensor:
    """One feature tensor per fold: `fit_and_score(keep)` fits on the training pairs where `keep` is True and returns
    (n_users, n_items, n_features) scores; fold k's model never saw fold k's pairs. -> (n_folds, n_users, n_items, f)"""
    return torch.stack([fit_and_score(folds != k) for k in range(n_folds)])


def pair_folds(train_pairs: Interactions, folds: np.ndarray, n_items: int, users: np.ndarray,
               items: np.ndarray) -> np.ndarray:
    """The fold of each (users[j], items[j]), which must be a training pair; `folds[p]` is training pair p's.
    (n,) -> (n,) int64"""
    keys = train_pairs.users.astype(np.int64) * n_items + train_pairs.items
    order = np.argsort(keys)
    wanted = np.asarray(users, np.int64) * n_items + np.asarray(items, np.int64)
    at = np.minimum(np.searchsorted(keys[order], wanted), len(keys) - 1)
    if not np.array_equal(keys[order][at], wanted):
        raise ValueError("pair_folds: a looked-up pair is not a training pair, so it has no fold")
    return folds[order[at]]


def stack_examples(users: np.ndarray, pos: np.ndarray, neg: np.ndarray, pair_fold: np.ndarray
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One epoch's BCE examples, positives then their negatives: each positive (label 1) with the fold of its pair,
    and its k negatives (label 0) with that same fold, so a user's positive and the negatives drawn beside it read
    the same out-of-fold fit, one that never saw the positive. (n,), (n,), (n, k), (n,) -> 4 x (n (1 + k),)"""
    k = neg.shape[1]
    all_users = torch.as_tensor(np.concatenate([users, np.repeat(users, k)]))
    all_items = torch.as_tensor(np.concatenate([pos, neg.reshape(-1)]))
    all_folds = torch.as_tensor(np.concatenate([pair_fold, np.repeat(pair_fold, k)]))
    labels = torch.cat([torch.ones(len(users)), torch.zeros(neg.size)])
    return all_users, all_items, all_folds, labels


def fold_profiles(reviews: pa.Table, vectors: np.ndarray, data: PreparedData, keep_pairs: np.ndarray,
                  meta: dict, times: np.ndarray | None = None) -> Profiles:
    """Profiles pooled from the training reviews of the kept training pairs only. reviews: the cache's
    (user_idx, item_idx, split) table, vectors (n_reviews, dim); keep_pairs: (n_train,) bool over data.train;
    with the reviews' times, the recency-weighted user profiles of the same reviews too."""
    users, items = reviews.column("user_idx").to_numpy(), reviews.column("item_idx").to_numpy()
    split = reviews.column("split").to_numpy(zero_copy_only=False)
    n_items = data.n_items
    kept_keys = np.sort(data.train.users[keep_pairs].astype(np.int64) * n_items + data.train.items[keep_pairs])
    keys = users.astype(np.int64) * n_items + items
    pos = np.minimum(np.searchsorted(kept_keys, keys), max(len(kept_keys) - 1, 0))
    kept = (split == "train") & (kept_keys[pos] == keys)
    tables = mean_profiles(users, items, np.where(kept, "train", "held_out"), vectors, data.n_users, n_items,
                           times=times)
    return Profiles.from_tables(tables, meta)


def closed_form_parts(config: RankingConfig, choices: dict, data: PreparedData, profiles: Profiles,
                      keep_pairs: np.ndarray) -> torch.Tensor:
    """bert_rs's three standardised score parts for every (user, item), fitted on the kept training pairs at the
    validation-chosen settings (one-point grids: no search). -> (n_users, n_items, 3)"""
    held = config.override("bert_rs", **fixed_choices(choices))
    model = build_model(RunSpec(model="bert_rs", embeddings=ENCODER), held, data.n_users, data.n_items, profiles)
    if not isinstance(model, ReviewAwareEASE):
        solver = getattr(model, "solver", type(model).__name__)
        raise RuntimeError(f"models.bert_rs.solver resolved to {solver!r}; the stack reads the dense bert_rs's parts "
                           "(set models.bert_rs.solver: dense, or raise train.memory_budget_gb)")
    model.fit(data.train.users[keep_pairs], data.train.items[keep_pairs])
    model.solve(choices["side_weight"], choices["ease_lambda"], choices["regulariser"], choices["whitening"])
    users = torch.arange(data.n_users)
    with torch.no_grad():
        parts = [standardise(model.ease.score_all(users).double()),
                 standardise(model.text_scores(users, choices["text_match"], choices["whitening"]).double()),
                 standardise(model.log_counts[None, :].double()).expand(data.n_users, -1)]
    return torch.stack(parts, dim=-1).float()


def default_weights(choices: dict) -> list[float]:
    """The default's own weights on its parts (item model, text match, popularity): the stack's starting point."""
    return [0.0 if choices.get("pop_only") else 1.0, float(choices["text_weight"]), float(choices["pop_weight"])
            if not choices.get("pop_only") else 1.0]


# ------------------------------------------------------------------------------------------------ the stacked head


class StackedHead(Scorer):
    """logit(u, i) = [neural branches' logit] + w^T f(u, i) (+ b): the closed-form parts f enter the prediction layer
    as three more inputs. At ranking time f is the full-training bert_rs's; in training, the out-of-fold one."""

    trainable = True

    def __init__(self, base: FusionRanker | None, features: torch.Tensor, init_weights: list[float]) -> None:
        super().__init__()
        self.base = base
        self.register_buffer("features", features, persistent=False)  # (n_users, n_items, 3) full-training parts
        self.feature_weight = nn.Parameter(torch.tensor(init_weights, dtype=torch.float32))  # (3,)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, users: torch.Tensor, items: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        f = self.features[users, items] if features is None else features  # (b, 3)
        out = f @ self.feature_weight + self.bias
        return out + self.base(users, items) if self.base is not None else out

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.forward(users, items)

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        out = self.features[users] @ self.feature_weight + self.bias  # (b, n_items)
        return out + self.base.score_all(users) if self.base is not None else out


def train_stack(model: StackedHead, config: RankingConfig, data: PreparedData, oof: torch.Tensor,
                folds: np.ndarray) -> tuple[StackedHead, int, float, int]:
    """BCE over positives and sampled negatives with out-of-fold features, early stopping on validation full-ranking
    NDCG@10 (as `train` does), with the optimiser settings of `config`'s STACK_SECTION. Returns (model at its best
    epoch, best epoch, best validation NDCG@10, epochs run)."""
    settings, seed = config.section(STACK_SECTION), config.train.seed
    torch.manual_seed(seed)
    sampler = NegativeSampler(data.train.users, data.train.items, data.n_users, data.n_items, seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    mask = full_ranking_mask(data, "valid")
    best, best_epoch, best_state, stale, epoch = -math.inf, 0, None, 0, 0
    for epoch in range(1, settings.epochs + 1):
        model.train()
        users, pos, neg = sampler.epoch(settings.num_negatives)
        all_users, all_items, all_folds, labels = stack_examples(
            users, pos, neg, pair_folds(data.train, folds, data.n_items, users, pos))
        # positives first, then their negatives: shuffle so each batch mixes both, as pointwise BCE over a batch does
        perm = torch.randperm(len(all_users))
        step = settings.batch_size * (1 + neg.shape[1])
        for start in range(0, len(perm), step):
            b = perm[start:start + step]
            feats = oof[all_folds[b], all_users[b], all_items[b]]
            loss = F.binary_cross_entropy_with_logits(model(all_users[b], all_items[b], feats), labels[b])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        valid = valid_metrics(model, data, mask)[SELECTION_METRIC]
        if valid > best:
            best, best_epoch, stale = valid, epoch, 0
            best_state = {k_: v.clone() for k_, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= settings.patience:
                break
    model.load_state_dict(best_state)
    return model, best_epoch, best, epoch


# ---------------------------------------------------------------------------------------------------- the study


def test_scores(model: nn.Module, data: PreparedData) -> dict:
    """Per-positive full NDCG@10 on test (for the bootstrap) and the full-ranking metrics: reported, never chosen on."""
    ranked = rank_full(model, data.test, full_ranking_mask(data, "test"))
    per_positive = np.where(ranked.ranks < 10, 1.0 / np.log2(ranked.ranks + 2.0), 0.0)
    return {"test_full": metrics_from_ranks(ranked.ranks, [1, 3, 5, 10]), "per_positive": per_positive.tolist()}


def prepared_and_cache(work: Path, protocol: str, params: Params) -> tuple[PreparedData, Path]:
    """The same prepare and embed code as `bertrs prepare` / `bertrs embed`, skipped when already built."""
    root = work / protocol / "prepared"
    if not (root / "stats.json").is_file():
        config = dataclasses.replace(params.prepare, protocol=protocol, input=[str(SAMPLE)])
        prepare_dataset(config, config.input, root)
    data = load_prepared(root)
    cache = work / protocol / "embeddings" / ENCODER
    if not (cache / "meta.json").is_file():
        build_caches(data.root, params.encoders[ENCODER].model, {ENCODER: params.embed_for(ENCODER)}, {ENCODER: cache})
    return data, cache


def run_protocol(work: Path, protocol: str, params: Params, seeds: list[int], n_folds: int, log,
                 rows_to_run: tuple[str, ...] = ROWS, max_configs: int = len(TUNED)) -> dict:
    data, cache = prepared_and_cache(work, protocol, params)
    profiles = load_model_profiles(cache, data, params.ranking.section("bert_rs"), params.ranking.train)
    ledger = Ledger(work / protocol / "runs.jsonl")
    base = params.ranking.override(device=TRAINING["device"])  # bert_rs as configured, on the study's device

    def closed_form() -> dict:
        started = time.perf_counter()
        result = train(RunSpec(model="bert_rs", embeddings=ENCODER), base, data, profiles, progress=False)
        return {"valid": result.best_valid[SELECTION_METRIC], "choices": result.model.choices(),
                **test_scores(result.model, data), "seconds": time.perf_counter() - started}

    reference = ledger.get_or_run("bert_rs", closed_form)
    choices = reference["choices"]
    log(f"[{protocol}] bert_rs valid {reference['valid']:.4f} test {reference['test_full']['ndcg@10']:.4f} {choices}")

    stack_inputs: dict = {}

    def stack_features():
        if not stack_inputs:
            started = time.perf_counter()
            everything = np.ones(len(data.train.users), dtype=bool)
            full = closed_form_parts(base, choices, data, profiles, everything)
            folds = assign_folds(data.train.users, n_folds, seed=0)
            reviews, vectors = load_review_embeddings(cache, data_fingerprint=data.fingerprint)
            times = review_times(reviews, data)
            oof = out_of_fold_features(folds, n_folds, lambda keep: closed_form_parts(
                base, choices, data, fold_profiles(reviews, vectors, data, keep, profiles.meta, times), keep))
            stack_inputs.update(full=full, oof=oof, folds=folds)
            log(f"[{protocol}] out-of-fold features: {n_folds} folds in {time.perf_counter() - started:.0f}s")
        return stack_inputs["full"], stack_inputs["oof"], stack_inputs["folds"]

    def fit(row: str, overrides: dict, seed: int) -> dict:
        model_name, config = row_config(base, row, overrides, seed)
        started = time.perf_counter()
        if row.startswith("stack_"):
            full, oof, folds = stack_features()
            torch.manual_seed(seed)  # before the branches are drawn, as `train` does: a resumed run draws the same
            neural = None
            if row == "stack_neural":
                neural = build_model(RunSpec(model=model_name, embeddings=ENCODER), config, data.n_users,
                                     data.n_items, profiles)
            model = StackedHead(neural, full, default_weights(choices))
            model, best_epoch, valid, epochs = train_stack(model, config, data, oof, folds)
            extra = {"feature_weights": model.feature_weight.detach().tolist()}
        else:
            text = model_name != "neumf"
            spec = RunSpec(model=model_name, embeddings=ENCODER if text else None)
            result = train(spec, config, data, profiles if text else None, progress=False)
            model, best_epoch, valid, epochs = (result.model, result.best_epoch, result.best_valid[SELECTION_METRIC],
                                                len(result.curves))
            extra = {}
        return {"valid": valid, "best_epoch": best_epoch, "epochs": epochs, **test_scores(model, data), **extra,
                "seconds": time.perf_counter() - started}

    rows: dict = {"bert_rs": {"kind": "closed form (default)", "valid": reference["valid"],
                              "test_full_ndcg@10": reference["test_full"]["ndcg@10"], "test_std": 0.0,
                              "per_positive": reference["per_positive"], "choices": choices, "configs": 1,
                              "seeds": 1}}
    plan = {row: [{}] if row.endswith(CONTEXT) else list(TUNED[:max_configs]) for row in rows_to_run}
    for row, configs in plan.items():
        row_seeds = seeds[:1] if row.endswith(CONTEXT) else seeds  # context rows: one seed
        search = []
        for index, overrides in enumerate(configs):  # chosen with the first seed, on validation only
            out = ledger.get_or_run(f"{row}/c{index}/s{seeds[0]}", lambda: fit(row, overrides, seeds[0]))
            search.append(out["valid"])
            log(f"[{protocol}] {row} c{index} seed {seeds[0]}: valid {out['valid']:.4f} "
                f"(epoch {out['best_epoch']}/{out['epochs']}, {out['seconds']:.0f}s)")
        chosen = int(np.argmax(search))
        runs = [ledger.get_or_run(f"{row}/c{chosen}/s{seed}", lambda: fit(row, configs[chosen], seed))
                for seed in row_seeds]
        tests = [r["test_full"]["ndcg@10"] for r in runs]
        per_positive = np.mean([r["per_positive"] for r in runs], axis=0)
        low, high = user_bootstrap(per_positive, reference["per_positive"], data.test.users)
        rows[row] = {"kind": "learned", "configs": len(configs), "chosen": configs[chosen], "valid_search": search,
                     "valid": float(np.mean([r["valid"] for r in runs])), "test_full_ndcg@10": float(np.mean(tests)),
                     "test_std": float(np.std(tests)), "test_by_seed": tests, "seeds": len(runs),
                     "best_epochs": [r["best_epoch"] for r in runs],
                     "feature_weights": [r.get("feature_weights") for r in runs] if row.startswith("stack_") else None,
                     "gain_vs_bert_rs": float(np.mean(tests)) - reference["test_full"]["ndcg@10"],
                     "bootstrap_95ci_gain": [low, high]}
        log(f"[{protocol}] {row}: config {chosen}, test {np.mean(tests):.4f} +- {np.std(tests):.4f} vs bert_rs "
            f"{reference['test_full']['ndcg@10']:.4f}, 95% CI of gain [{low:+.4f}, {high:+.4f}]")
    best_learned, winner = validation_winner(rows)
    for row in rows.values():
        row.pop("per_positive", None)
    return {"stats": {"users": data.n_users, "items": data.n_items, "train": len(data.train.users),
                      "valid": len(data.valid.users), "test": len(data.test.users)},
            "rows": rows, "best_learned_on_validation": best_learned, "validation_winner": winner, "folds": n_folds}


# ------------------------------------------------------------------------------------------------------ report


def validation_winner(rows: dict) -> tuple[str | None, str]:
    """(the tuned learned row best on validation, the study's winner): the winner is that row only when its
    seed-mean validation NDCG@10 is strictly above bert_rs's, else bert_rs (ties keep the default). Context rows
    (params.yaml's training) are no candidates, and test numbers play no part."""
    learned = [r for r in rows if rows[r]["kind"] == "learned" and not r.endswith(CONTEXT)]
    if not learned:
        return None, "bert_rs"
    best = max(learned, key=lambda r: rows[r]["valid"])
    return best, best if rows[best]["valid"] > rows["bert_rs"]["valid"] else "bert_rs"


def verdict_line(protocol: str, res: dict) -> str:
    """The decision, made on validation, then what test says about it (reported, never chosen on)."""
    rows = res["rows"]
    ref = rows["bert_rs"]
    best, winner = validation_winner(rows)
    if best is None:
        return f"{protocol}: no tuned learned row was run; bert_rs is the only candidate."
    b = rows[best]
    learned = [r for r in rows if rows[r]["kind"] == "learned" and not r.endswith(CONTEXT)]
    above = [r for r in learned if rows[r]["bootstrap_95ci_gain"][0] > 0]
    below = [r for r in learned if rows[r]["bootstrap_95ci_gain"][1] < 0]
    decision = (f"{protocol}: on validation (what selection sees) no learned head beats the closed-form default "
                f"bert_rs: the best learned row, {best}, scores {b['valid']:.4f} vs {ref['valid']:.4f}, so bert_rs "
                "stays the validation winner." if winner == "bert_rs" else
                f"{protocol}: {best} beats the closed-form default bert_rs on validation (what selection sees), "
                f"{b['valid']:.4f} vs {ref['valid']:.4f}, so it is the validation winner.")
    return decision + (
        f" On test (reported, not chosen on) {best} scores {b['test_full_ndcg@10']:.4f} vs "
        f"{ref['test_full_ndcg@10']:.4f} ({_pct(b['test_full_ndcg@10'] / ref['test_full_ndcg@10'] - 1)}; 95% CI of "
        f"the gain [{b['bootstrap_95ci_gain'][0]:+.4f}, {b['bootstrap_95ci_gain'][1]:+.4f}]). Learned rows with a "
        f"test interval above zero: {', '.join(above) or 'none'}; below zero: {', '.join(below) or 'none'}.")


def markdown(results: dict, meta: dict) -> str:
    configs = TUNED[:meta.get("max_configs", len(TUNED))]
    lines = ["# Fusion head: a learned head vs the closed-form default bert_rs", "",
             f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ",
             f"Date: {meta['date']}; this run {meta['minutes']:.0f} min, fits in the ledger {meta['fit_minutes']:.0f} "
             f"min; torch {meta['torch']}; seeds {meta['seeds']}", "",
             "Digital Music sample (data/sample, params.yaml's prepare: 3/3 k-core), mean-pooled MiniLM cache "
             "(`minilm_mean`). Full-ranking NDCG@10 on test; every choice made on validation full-ranking NDCG@10. "
             f"Learned rows: {len(configs)} configurations each (4 negatives per positive; lr / factors / L2: "
             + "; ".join(f"{c['learning_rate']:g} / {c['factors']} / {c['weight_decay']:g}" for c in configs)
             + "), chosen with the first seed, retrained with each seed, early stopping (patience "
             f"{TRAINING['patience']}). `*_as_configured`: params.yaml's training (1 negative, one seed), for context. "
             "Stack rows: the default's three score parts (item model, text match, popularity; standardised per "
             f"user) as inputs of the head, out-of-fold ({meta['folds']} folds per user, profiles re-pooled without "
             "the held-out fold) for training pairs, the full-training fit at validation/test. The verdict is decided "
             "on validation (seed-mean NDCG@10; ties keep bert_rs); test is reported. Interval: paired bootstrap "
             "over test users (2000 rounds) of the seed-mean gain over bert_rs.", "", "## Verdict", ""]
    lines += [f"- {verdict_line(p, r)}" for p, r in results.items()]
    for protocol, res in results.items():
        s = res["stats"]
        lines += ["", f"## {protocol}", "",
                  f"{s['users']} users, {s['items']} items, {s['train']} / {s['valid']} / {s['test']} "
                  "train / valid / test positives.", "",
                  "| row | configs | seeds | valid NDCG@10 | test NDCG@10 (mean +- sd over seeds) | vs bert_rs | "
                  "95% CI of gain | best epochs |", "|---|---|---|---|---|---|---|---|"]
        ref = res["rows"]["bert_rs"]["test_full_ndcg@10"]
        for name, r in res["rows"].items():
            ci = r.get("bootstrap_95ci_gain")
            lines.append(f"| {name} | {r['configs']} | {r['seeds']} | {r['valid']:.4f} | "
                         f"{r['test_full_ndcg@10']:.4f} +- "
                         f"{r['test_std']:.4f} | {_pct(r['test_full_ndcg@10'] / ref - 1) if name != 'bert_rs' else '-'}"
                         f" | {f'[{ci[0]:+.4f}, {ci[1]:+.4f}]' if ci else '-'} | "
                         f"{', '.join(map(str, r.get('best_epochs', []))) or '-'} |")
        lines += ["", f"bert_rs's validation choices: `{json.dumps(res['rows']['bert_rs']['choices'])}`."]
        for name in ("stack_features", "stack_neural"):
            if name in res["rows"]:
                w = res["rows"][name]["feature_weights"]
                lines.append(f"{name} learned weights on (item model, text match, popularity), per seed: "
                             + "; ".join("(" + ", ".join(f"{x:.2f}" for x in ws) + ")" for ws in w) + ".")
    return "\n".join(lines) + "\n"


def _pct(x) -> str:
    return f"{100 * x:+.1f}%"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked (results/fusion_head.md's header carries the command that regenerates it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocols", default="leave_one_out")
    parser.add_argument("--seeds", default="1,2", help="comma-separated; the first one chooses the configuration")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--rows", default=",".join(ROWS), help="learned rows to run (bert_rs always runs)")
    parser.add_argument("--max-configs", type=int, default=len(TUNED),
                        help=f"try only the first N of the {len(TUNED)} tuned configurations (a quick look)")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--work", default=str(REPO / "build" / "fusion_head"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "fusion_head"))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    args.rows = tuple(args.rows.split(","))
    unknown = set(args.rows) - set(ROWS)
    if unknown:
        parser.error(f"--rows: unknown {sorted(unknown)}; known: {', '.join(ROWS)}")
    if not 1 <= args.max_configs <= len(TUNED):
        parser.error(f"--max-configs: must lie in [1, {len(TUNED)}], got {args.max_configs}")
    if args.folds < 2:
        parser.error(f"--folds: needs at least 2 (a fold is scored by a fit on the others), got {args.folds}")
    return args


def main() -> None:
    args = parse_args()
    rows = args.rows
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    params = with_refit(load_params(args.params), False)  # see the module docstring: no final fit in this study
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.perf_counter()
    results = {p: run_protocol(Path(args.work), p, params, seeds, args.folds, lambda m: print(m, flush=True), rows,
                               args.max_configs)
               for p in args.protocols.split(",")}
    import psutil

    meta = {"date": date.today().isoformat(),
            "machine": f"{os.cpu_count()} CPU cores (shared), {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, "
                       f"{platform.processor() or platform.machine()}",
            "command": "python " + " ".join(["benchmarks/fusion_head.py", *sys.argv[1:]]),
            "seeds": seeds, "folds": args.folds, "minutes": (time.perf_counter() - started) / 60,
            "fit_minutes": sum(r.get("seconds", 0.0) for p in results
                               for r in Ledger(Path(args.work) / p / "runs.jsonl").rows.values()) / 60,
            "torch": torch.__version__, "tuned_configs": TUNED, "max_configs": args.max_configs,
            "training": TRAINING, "rows": rows}
    out = Path(args.out)
    write_json(out.with_suffix(".json"), {"meta": meta, "results": results,
                                          "verdict": {p: verdict_line(p, r) for p, r in results.items()}})
    with atomic_path(out.with_suffix(".md")) as tmp:
        tmp.write_text(markdown(results, meta))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
