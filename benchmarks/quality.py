"""Quality benchmark: does review text improve recommendations, on every real dataset, against tuned baselines?

    python benchmarks/quality.py                                   # every dataset found, both protocols, 3 seeds
    python benchmarks/quality.py --datasets digital_music --protocols leave_one_out --seeds 1 --budget 1  # a look

For each dataset and split protocol: prepare the data (same code as `bertrs prepare`), fine-tune the encoder with
MLM+NSP on the training reviews (`bertrs finetune`), build the embedding caches (`bertrs embed`), then train and
evaluate every model with the same code as `bertrs train` / `bertrs evaluate`:

- non-text: pop, mf, ease, gmf, mlp, neumf, and ease_wide (EASE with lambda searched over as many values as the
  default bert_rs makes validation looks, so that a text gain cannot be the product of a bigger search);
- text: bert_rs (the default: EASE with the review vectors as side information plus a text match, on each cache) and
  each of its two levers alone (bert_rs_side_only, bert_rs_late_only); bert_rs_scalable (the same run with
  models.bert_rs.solver: scalable, the low-rank solver the default switches to past its memory budget);
  bert_rs_unguarded (train.guard_additions: false: the choice rule alone, whether or not the search's gain survives
  cross-fitting); bert_rs_validation_best (train.choice_rule: best: the validation best, guarded, as the default
  chose before the simplest-within-noise rule);
  bert_rs_neural (params.yaml's neural form:
  projected fusion + text similarity + user-ID dropout 0.3) on the mean-pooled cache; bert_rs_paper (eq. 8
  literally, MLM+NSP encoder, pooler);
- the shuffle ablation, `+shuffled`, of bert_rs (mean cache), bert_rs_neural and bert_rs_paper: the partner's chosen
  configuration held fixed (lambda, side weight, match, text weight; for neural rows the configuration and, seed by
  seed, the epoch count) and only the profiles permuted. `+shuffled_researched` (bert_rs, mean cache) reruns the text
  search on shuffled profiles: it can fall back to plain EASE by construction, so it controls for search luck only.

Fairness rules. Every choice is made on the validation split by full-ranking NDCG@10, the metric every model is
compared on (neural models early-stop on it too); the validation ranking masks training pairs and validation
positives only, so no choice sees a test positive. Every trainable model gets the same `--budget` hyper-parameter
configurations (the first N of SEARCH below), every EASE-based model the same N values of lambda; the configuration
is chosen with seed 0, then retrained with `--seeds` seeds. The number of validation looks each row made while
choosing is printed beside it. "Best text" and "best non-text" are chosen on validation; the test split is only read
to report. The split itself is fixed (prepare seed 42) so that the fine-tuned encoder never sees a review that
another seed's split would hold out; seeds vary model initialisation and negative sampling. One fine-tuned encoder
serves both protocols of a dataset: it is trained on the reviews that are training reviews under both, so neither
protocol's held-out reviews reach it. Closed-form models (pop, ease) have seed spread 0, and so does bert_rs except
through its guard (train.guard_additions), whose validation halvings are drawn with the seed: where the text's
gain is marginal, one seed may keep it and another fall back to plain EASE. The evidence for closed-form rows is a
paired bootstrap over test users (each user resampled with all of their test positives), which gives a 95% interval
for the gain of the best text model over the best non-text model. With `train.refit_with_validation` (the default)
every row, once its settings and epoch count are chosen, is fitted once more on training + validation pairs before
test is scored (pipeline/ranking/training/train.py), text rows and non-text rows alike; the validation numbers
printed are those measured before that fit.

Leakage audit: the mean-pooled bert_rs and bert_rs_neural rows are also trained once with profiles pooled over *all*
reviews, test reviews included (what the paper's eq. 8 does when read literally); the inflation this causes is
reported, never used.

Writes benchmarks/results/quality.{json,md} (`--out`). Work is kept under build/quality/ (`--work`: prepared data,
encoders, caches, one JSON line per trained model, one ledger per final-fit protocol), so a rerun resumes where an
interrupted one stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    uses_text,
    DATASETS, EASE_SEARCH, PROTOCOLS, Ledger, caches_for, fixed_choices, ledger_file, mean_cache_of, pct,
    prepared_for, review_times, user_bootstrap, with_refit,
)
from pipeline.config import Params, RankingConfig, RunSpec, load_params  # noqa: E402
from pipeline.config.ranking import DenseSearchConfig  # noqa: E402
from pipeline.data.prepared import PreparedData, load_reviews  # noqa: E402
from pipeline.embeddings.cache import Profiles, load_profiles, load_review_embeddings  # noqa: E402
from pipeline.embeddings.profiles import mean_profiles  # noqa: E402
from pipeline.io import write_json  # noqa: E402
from pipeline.ranking.evaluation.evaluate import full_ranking_mask, rank_full, evaluate  # noqa: E402
from pipeline.ranking.registry import load_model_profiles  # noqa: E402
from pipeline.ranking.training.train import train  # noqa: E402
from pipeline.text.contrastive import PAIR_COLUMNS, contrastive_finetune  # noqa: E402
from pipeline.text.encoders import resolve_encoder  # noqa: E402
from pipeline.text.finetune import finetune_encoder  # noqa: E402
from pipeline.text.static import distill_static, is_static  # noqa: E402

KS = (1, 3, 5, 10)
NON_TEXT = ("pop", "mf", "ease", "gmf", "mlp", "neumf")

# The shared search space, in order: a budget of N takes the first N for every trainable model.
SEARCH = (
    {"learning_rate": 3e-3, "factors": 32, "mlp_layers": [128, 64, 32], "weight_decay": 0.0, "dropout": 0.0},
    {"learning_rate": 1e-3, "factors": 32, "mlp_layers": [128, 64, 32], "weight_decay": 0.0, "dropout": 0.0},
    {"learning_rate": 3e-3, "factors": 64, "mlp_layers": [256, 128, 64], "weight_decay": 1e-6, "dropout": 0.2},
    {"learning_rate": 1e-2, "factors": 16, "mlp_layers": [64, 32, 16], "weight_decay": 1e-6, "dropout": 0.0},
)
# The default neural text head as params.yaml configures it.
NEURAL_FORM = {"semantic_form": "projected", "text_similarity": True, "user_id_dropout": 0.3}
# The two text levers of the default bert_rs, each alone (issue 7: which one carries the gain?).
LEVERS = {
    "bert_rs_side_only": {"text_weights": [0.0]},
    "bert_rs_late_only": {"text_side_weights": [0.0]},
}
FIXED_SHUFFLE = "+shuffled"  # the headline ablation: partner's choices held, profiles permuted
RESEARCHED_SHUFFLE = "+shuffled_researched"  # the text search rerun on permuted profiles


def variants(params: Params) -> dict[str, tuple[RunSpec, dict]]:
    """Every row of the benchmark table: (run spec, train-config overrides), in the order they are run: non-text
    models, text models, ease_wide (sized by bert_rs's looks), then the shuffled ablations (which need their
    partner's choices)."""
    out = {name: (RunSpec(model=name), {}) for name in NON_TEXT}
    mean_cache = mean_cache_of(params)
    for encoder in params.encoders:
        out[f"bert_rs@{encoder}"] = (RunSpec(model="bert_rs", embeddings=encoder), {})
    for lever, overrides in LEVERS.items():
        out[f"{lever}@{mean_cache}"] = (RunSpec(model="bert_rs", embeddings=mean_cache), overrides)
    out[f"bert_rs_scalable@{mean_cache}"] = (RunSpec(model="bert_rs", embeddings=mean_cache),
                                             {"solver": "scalable", "dense": DenseSearchConfig()})
    out[f"bert_rs_unguarded@{mean_cache}"] = (RunSpec(model="bert_rs", embeddings=mean_cache),
                                              {"guard_additions": False})
    out[f"bert_rs_validation_best@{mean_cache}"] = (RunSpec(model="bert_rs", embeddings=mean_cache),
                                                    {"choice_rule": "best"})
    out[f"bert_rs_neural@{mean_cache}"] = (RunSpec(model="bert_rs_neural", embeddings=mean_cache), NEURAL_FORM)
    finetuned = [e for e, spec in params.encoders.items() if spec.finetune] or list(params.encoders)
    out[f"bert_rs_paper@{finetuned[0]}"] = (RunSpec(model="bert_rs_paper", embeddings=finetuned[0]), {})
    out["ease_wide"] = (RunSpec(model="ease"), {})
    for partner in (f"bert_rs@{mean_cache}", f"bert_rs_neural@{mean_cache}", f"bert_rs_paper@{finetuned[0]}"):
        spec, overrides = out[partner]
        out[partner + FIXED_SHUFFLE] = (dataclasses.replace(spec, shuffle=True), overrides)
    spec, overrides = out[f"bert_rs@{mean_cache}"]
    out[f"bert_rs@{mean_cache}{RESEARCHED_SHUFFLE}"] = (dataclasses.replace(spec, shuffle=True), overrides)
    return out


# ---------------------------------------------------------------------------------------------------- stages


def shared_training_reviews(work: Path, dataset: str, protocols: list[str], params: Params) -> pa.Table:
    """Reviews that are training reviews under *every* protocol run: one fine-tuned encoder per dataset then serves
    both protocols without ever having seen a review (or, for contrastive pairs, an interaction) that either of them
    holds out."""
    tables = [load_reviews(prepared_for(work, dataset, p, params).root, columns=list(PAIR_COLUMNS))
              for p in protocols]
    train_everywhere = np.logical_and.reduce([t.column("split").to_numpy(zero_copy_only=False) == "train"
                                              for t in tables])
    if len({t.num_rows for t in tables}) != 1 or not all(
            np.array_equal(t.column("review_id").to_numpy(), tables[0].column("review_id").to_numpy()) for t in tables):
        raise RuntimeError(f"{dataset}: protocols kept different reviews; cannot share one fine-tuned encoder")
    splits = np.where(train_everywhere, "train", "held_out")
    return tables[0].set_column(tables[0].schema.get_field_index("split"), "split", pa.array(splits))


def encoders_for(work: Path, dataset: str, protocols: list[str], params: Params) -> dict[str, str]:
    """Encoder folder (or spec) per name; fine-tuned ones are trained once per dataset (see above), static ones
    distilled once per dataset from the transformer they name (pipeline/text/static.py)."""
    out = {}
    for name, spec in params.encoders.items():
        folder = work / dataset / "encoders" / name
        if spec.static:
            if params.finetune_reason(name) is None:
                raise NotImplementedError(f"encoders.{name}: a fine-tuned static encoder is not part of this study")
            if not is_static(folder):
                distill_static(resolve_encoder(spec.model), folder, source={"base": spec.model, "finetuned": False})
            out[name] = str(folder)
            continue
        if params.finetune_reason(name) is not None:
            out[name] = spec.model
            continue
        if not (folder / "config.json").is_file():
            reviews = shared_training_reviews(work, dataset, protocols, params)
            adapt = contrastive_finetune if spec.objective == "contrastive" else finetune_encoder
            metrics = adapt(reviews, spec.model, folder, params.finetune)
            write_json(work / dataset / "encoders" / f"{name}.metrics.json", metrics)
        out[name] = str(folder)
    return out


def leaky_profiles(cache: Path, data: PreparedData) -> Profiles:
    """The audit's deliberately wrong profiles: every review pooled, test reviews included."""
    table, vectors = load_review_embeddings(cache, data_fingerprint=data.fingerprint)
    everything = np.full(table.num_rows, "train")
    tables = mean_profiles(table.column("user_idx").to_numpy(), table.column("item_idx").to_numpy(), everything,
                           vectors, data.n_users, data.n_items, times=review_times(table, data))
    honest = load_profiles(cache, data_fingerprint=data.fingerprint)
    return Profiles.from_tables(tables, honest.meta)


# ----------------------------------------------------------------------------------------------- train + eval


def ease_wide_lambdas(n: int) -> tuple[float, ...]:
    """`n` lambdas spread evenly on a log scale over 1..1e5: ease_wide's search, as many looks as bert_rs's."""
    return tuple(float(x) for x in np.geomspace(1.0, 1e5, n))


def config_for(base: RankingConfig, spec: RunSpec, index: int, seed: int, lambdas: tuple[float, ...] = EASE_SEARCH
               ) -> RankingConfig:
    if spec.model == "ease":
        return base.override("ease", lambdas=[lambdas[index]], seed=seed)
    # it searches lambda itself, jointly with its text settings (models.bert_rs.dense.lambdas)
    if spec.model == "bert_rs":
        return base.override("bert_rs", seed=seed)
    own = {f.name for f in dataclasses.fields(base.section(spec.model))}  # MF has no MLP; pop nothing to search
    return base.override(spec.model, **{k: v for k, v in SEARCH[index].items() if k in own}, seed=seed)


def n_configs(spec: RunSpec, budget: int) -> int:
    return 1 if spec.model in ("pop", "bert_rs") else budget


def validation_looks(spec: RunSpec, config: RankingConfig, result) -> int:
    """How many validation scores one fit compared while choosing: its candidates (closed-form models with a grid,
    as select.py counted them), its epochs (neural models), or one."""
    if result.selection is not None:
        return result.selection.looks
    return len(result.curves) if result.model.trainable else 1  # as train() reads it


def validation_ndcg(spec: RunSpec, config: RankingConfig, data: PreparedData) -> dict:
    """A search step that only needs the validation score (ease_wide's lambdas): no final fit."""
    result = train(spec, config.override(refit_with_validation=False), data, None, progress=False)
    return {"valid_full_ndcg@10": result.best_valid["ndcg@10"], "validation_looks": 1}


def fit_and_score(spec: RunSpec, config: RankingConfig, data: PreparedData, profiles: Profiles | None,
                  fixed_epochs: int | None = None) -> dict:
    started = time.perf_counter()
    result = train(spec, config, data, profiles, progress=False, fixed_epochs=fixed_epochs)
    valid = result.best_valid  # measured before the final fit, which has learned the validation pairs
    test = evaluate(result.model, data, "test", ks=KS, protocols=["sampled", "full"])
    ranked = rank_full(result.model, data.test, full_ranking_mask(data, "test"))
    per_user = np.where(ranked.ranks < 10, 1.0 / np.log2(ranked.ranks + 2.0), 0.0).tolist()  # for the bootstrap
    return {
        "valid_full_ndcg@10": valid["ndcg@10"],
        "test": {p: test[p] for p in ("sampled", "full")},
        "buckets": {b: m["ndcg@10"] for b, m in test["buckets"]["full"].items()},
        "bucket_sizes": {b: m["n"] for b, m in test["buckets"]["full"].items()},
        "per_positive_full_ndcg@10": per_user,
        "best_epoch": result.best_epoch,
        "text_choices": result.model.choices(),
        "validation_looks": 0 if fixed_epochs is not None else validation_looks(spec, config, result),
        "selection": result.selection.summary() if result.selection is not None else None,
        "chosen_with_profiles": result.chosen_with_profiles if profiles is not None else None,
        "seconds": time.perf_counter() - started,
    }


def run_dataset(work: Path, dataset: str, protocol: str, params: Params, budget: int, seeds: int,
                encoders: dict[str, str], log) -> dict:
    data = prepared_for(work, dataset, protocol, params)
    caches = caches_for(work, dataset, protocol, params, data, encoders)
    profiles = {name: load_model_profiles(path, data, params.ranking.section("bert_rs"), params.ranking.train,
                                          choosing=True)
                for name, path in caches.items()}
    ledger = Ledger(ledger_file(work / dataset / protocol, params.ranking.train.refit_with_validation))
    rows = {}
    mean_cache = mean_cache_of(params)
    for name, (spec, overrides) in variants(params).items():
        prof = profiles.get(spec.embeddings) if spec.embeddings else None
        base = params.ranking.override(spec.model, **overrides)
        search, looks = [], 0
        lambdas = EASE_SEARCH
        if name == "ease_wide":  # as many lambdas as the default bert_rs made validation looks
            lambdas = ease_wide_lambdas(rows[f"bert_rs@{mean_cache}"]["validation_looks"])
        key = f"{name}[{len(lambdas)}]" if name == "ease_wide" else name
        if name.endswith(FIXED_SHUFFLE):
            partner = rows[name.removesuffix(FIXED_SHUFFLE)]
            chosen = partner["config"]
            runs = []
            for seed in range(seeds):
                held = partner["seed_runs"][seed]
                config = config_for(base, spec, chosen, seed).override(spec.model,
                                                                       **fixed_choices(held["text_choices"]))
                epochs = held["best_epoch"] if spec.model not in ("bert_rs", "ease", "pop") else None
                runs.append(ledger.get_or_run(
                    f"{name}|c{chosen}|s{seed}|fixed", lambda: fit_and_score(spec, config, data, prof, epochs)))
        else:
            for index in range(len(lambdas) if name == "ease_wide" else n_configs(spec, budget)):
                config = config_for(base, spec, index, seed=0, lambdas=lambdas)
                step = (lambda: validation_ndcg(spec, config, data)) if name == "ease_wide" else (
                    lambda: fit_and_score(spec, config, data, prof))
                row = ledger.get_or_run(f"{key}|c{index}|s0", step)
                search.append(row["valid_full_ndcg@10"])
                looks += row["validation_looks"]
            chosen = int(np.argmax(search))
            runs = [ledger.get_or_run(f"{key}|c{chosen}|s{seed}" + ("|full" if name == "ease_wide" else ""),
                                      lambda: fit_and_score(spec, config_for(base, spec, chosen, seed, lambdas),
                                                            data, prof)) for seed in range(seeds)]
        rows[name] = summarise(spec, chosen, search, runs, looks)
        log(f"{dataset}/{protocol} {name}: config {chosen}, {looks} validation looks, valid {rows[name]['valid']:.4f}, "
            f"test full NDCG@10 {rows[name]['full']['ndcg@10'][0]:.4f} ± {rows[name]['full']['ndcg@10'][1]:.4f}")
    audit = leakage_audit(work, dataset, protocol, params, data, caches, rows, ledger)
    return {"stats": data.stats["table1"], "rows": rows,
            "verdict": verdict(rows, data.test.users, f"bert_rs@{mean_cache_of(params)}"),
            "leakage_audit": audit,
            "finetune": finetune_summary(work / dataset)}


def summarise(spec: RunSpec, chosen: int, search: list[float], runs: list[dict], looks: int) -> dict:
    out = {"model": spec.model, "cache": spec.embeddings, "shuffle": spec.shuffle, "config": chosen,
           "search_valid": search, "validation_looks": looks,
           "valid": float(np.mean([r["valid_full_ndcg@10"] for r in runs])),
           "seed_runs": [{"text_choices": r["text_choices"], "best_epoch": r["best_epoch"],
                          "selection": r.get("selection")} for r in runs],
           # a text row whose every seed fell back to a plain setting (bert_rs's guard) read no review vector
           "uses_text": spec.embeddings is not None and any(uses_text(r["text_choices"]) for r in runs)}
    for protocol in ("sampled", "full"):
        out[protocol] = {
            metric: (float(np.mean([r["test"][protocol][metric] for r in runs])),
                     float(np.std([r["test"][protocol][metric] for r in runs])))
            for metric in (f"{m}@{k}" for k in KS for m in ("hr", "ndcg"))
        }
    buckets = sorted({b for r in runs for b in r["buckets"]})
    out["buckets"] = {b: float(np.mean([r["buckets"].get(b, np.nan) for r in runs])) for b in buckets}
    out["bucket_sizes"] = runs[0]["bucket_sizes"]
    out["per_positive"] = np.mean([r["per_positive_full_ndcg@10"] for r in runs], axis=0).tolist()
    out["text_choices"] = runs[0]["text_choices"]
    out["seconds_per_fit"] = float(np.mean([r["seconds"] for r in runs]))
    return out


def verdict(rows: dict, test_users: np.ndarray, default: str | None = None) -> dict:
    """Best text and best non-text model chosen on validation; their test gap with seed spread and a paired
    bootstrap over test users (`test_users`: the user of each test positive, in the order of `per_positive`), and the
    same gap and interval for the `default` row (bert_rs on the mean-pooled cache) whatever validation preferred.
    Text rows that read no review vector (the guard kept a plain setting under every seed) are not candidates."""
    text = {n: r for n, r in rows.items() if r["cache"] is not None and not r["shuffle"] and r["uses_text"]}
    plain = {n: r for n, r in rows.items() if r["cache"] is None}
    best_text = max(text, key=lambda n: text[n]["valid"])
    best_plain = max(plain, key=lambda n: plain[n]["valid"])
    t, p = rows[best_text]["full"]["ndcg@10"], rows[best_plain]["full"]["ndcg@10"]
    shuffled = rows.get(f"{best_text}{FIXED_SHUFFLE}", {}).get("full", {}).get("ndcg@10", (np.nan, np.nan))
    neumf = rows["neumf"]["full"]["ndcg@10"]
    low, high = user_bootstrap(rows[best_text]["per_positive"], rows[best_plain]["per_positive"], test_users)
    spread = max(t[1], p[1])  # 0 when both are closed-form: then the user bootstrap is the only evidence
    sparsest = "1-3"
    bucket_gain = _relative(rows[best_text]["buckets"].get(sparsest), rows[best_plain]["buckets"].get(sparsest))
    default_gain = None
    if default in rows:
        d = rows[default]["full"]["ndcg@10"]
        default_gain = {"row": default, "relative_gain_over_best_non_text": _relative(d[0], p[0]),
                        "bootstrap_95ci_gain": list(user_bootstrap(rows[default]["per_positive"],
                                                                   rows[best_plain]["per_positive"], test_users))}
    return {
        "default": default_gain,
        "best_text": best_text,
        "best_non_text": best_plain,
        "text_full_ndcg@10": t,
        "non_text_full_ndcg@10": p,
        "gain_over_best_non_text": t[0] - p[0],
        "relative_gain_over_best_non_text": _relative(t[0], p[0]),
        "relative_gain_over_neumf": _relative(t[0], neumf[0]),
        "seed_std": spread,
        "beats_by_more_than_two_std": bool(t[0] - p[0] > 2 * spread) if spread > 0 else None,
        "text_wins_on_validation": bool(rows[best_text]["valid"] > rows[best_plain]["valid"]),
        "bootstrap_95ci_gain": [low, high],
        "bootstrap_excludes_zero": bool(low > 0),
        "shuffled_full_ndcg@10": shuffled,
        "shuffle_loses_gain": bool(shuffled[0] - p[0] < 0.5 * (t[0] - p[0])) if t[0] > p[0] else None,
        "sparsest_bucket_relative_gain": bucket_gain,
    }


def _relative(a, b):
    return None if a is None or b is None or b == 0 else float(a / b - 1.0)


def leakage_audit(work, dataset, protocol, params, data, caches, rows, ledger) -> dict:
    """Train the chosen configs of the mean-pooled text models once more on leaky profiles; report inflation."""
    out = {}
    audited_cache = mean_cache_of(params)
    for name, row in rows.items():
        if name not in (f"bert_rs@{audited_cache}", f"bert_rs_neural@{audited_cache}"):
            continue
        spec, overrides = variants(params)[name]
        leaky = leaky_profiles(caches[row["cache"]], data)
        config = config_for(params.ranking.override(spec.model, **overrides), spec, row["config"], seed=0)
        audit = ledger.get_or_run(f"{name}|c{row['config']}|s0|LEAKY", lambda: fit_and_score(spec, config, data, leaky))
        honest = row["full"]["ndcg@10"][0]
        leaked = audit["test"]["full"]["ndcg@10"]
        out[name] = {"honest_full_ndcg@10": honest, "leaky_full_ndcg@10": leaked,
                     "inflation": _relative(leaked, honest)}
    return out


def finetune_summary(base: Path) -> dict:
    return {p.name.removesuffix(".metrics.json"): {k: json.loads(p.read_text())[k]
                                                   for k in ("before", "after", "steps")}
            for p in sorted((base / "encoders").glob("*.metrics.json"))}


# --------------------------------------------------------------------------------------------------- reports


def markdown(results: dict, meta: dict) -> str:
    lines = ["# Quality benchmark", "",
             f"Run {meta['date']} on {meta['machine']} with `{meta['command']}`; model fitting took "
             f"{meta['fit_minutes']:.0f} min in all (resumed runs reuse build/quality/, so this invocation took "
             f"{meta['minutes']:.0f} min). "
             f"Seeds: {meta['seeds']}; tuning budget: {meta['budget']} configurations per model, chosen on "
             "validation full-ranking NDCG@10 (validation masks training pairs and validation positives only, never "
             "test pairs; neural models early-stop on the same metric). "
             + ("Every row is then fitted once more, at its chosen settings and epoch count, on training + "
                "validation pairs (`train.refit_with_validation`), so test is scored from the history before it; "
                "reviews and profiles stay training-only, so under leave-one-out bert_rs's rows choose with user "
                "profiles one review behind (each user's newest training review left out), as test reads them. "
                if meta.get("refit_with_validation") else
                "Test is scored from the fit to the training pairs alone. ")
             + "Test metrics: mean ± std over seeds. "
             "`@cache` names the embedding cache; `+shuffled` permutes its profiles across users and items while "
             "holding every setting its partner chose (lambda, text settings; for neural rows the configuration "
             "and the epoch count); `+shuffled_researched` reruns the text search on the permuted profiles. "
             "Validation looks: the validation scores a row compared while choosing (configurations x text "
             "settings for bert_rs, x epochs for neural models); ease_wide gets as many lambdas as the mean-cache "
             "bert_rs made looks. Closed-form models (pop, ease, ease_wide, bert_rs and its levers) are "
             "deterministic, so their seed spread is 0, except where bert_rs's guard (validation halvings drawn "
             "with the seed) keeps a marginal text gain under one seed and falls back to plain EASE under another; "
             "for them the paired bootstrap over test users (each user resampled with all of their test positives) "
             "is the evidence.", "",
             "## Summary (full-ranking NDCG@10, test; mean ± seed std where it is not 0)", "", *summary(results), ""]
    for key, res in results.items():
        stats = res["stats"]
        lines += [f"## {key}", "",
                  f"{stats['users']} users, {stats['items']} items, {stats['reviews']} reviews "
                  f"(sparsity {stats['sparsity']:.4f}).", ""]
        for protocol in ("full", "sampled"):
            lines += [f"### {protocol} ranking (test)", "",
                      "| model | " + " | ".join(f"HR@{k} | NDCG@{k}" for k in (10, 5, 3, 1))
                      + " | valid NDCG@10 | validation looks |",
                      "|---|" + "---|" * 10]
            for name, row in res["rows"].items():
                cells = [f"{row[protocol][f'{m}@{k}'][0]:.4f} ± {row[protocol][f'{m}@{k}'][1]:.4f}"
                         for k in (10, 5, 3, 1) for m in ("hr", "ndcg")]
                looks = "0 (partner's choices held)" if name.endswith(FIXED_SHUFFLE) else str(row["validation_looks"])
                lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['valid']:.4f} | {looks} |")
            lines.append("")
        v = res["verdict"]
        lines += ["### Verdict (chosen on validation, reported on test, full-ranking NDCG@10)", "",
                  f"- best text model: **{v['best_text']}** {v['text_full_ndcg@10'][0]:.4f} ± "
                  f"{v['text_full_ndcg@10'][1]:.4f}; best non-text: **{v['best_non_text']}** "
                  f"{v['non_text_full_ndcg@10'][0]:.4f} ± {v['non_text_full_ndcg@10'][1]:.4f}",
                  f"- gain {v['gain_over_best_non_text']:+.4f} ({pct(v['relative_gain_over_best_non_text'])}); "
                  + (f"more than twice the seed std ({v['seed_std']:.4f}): "
                   f"{'yes' if v['beats_by_more_than_two_std'] else 'no'}; " if v["beats_by_more_than_two_std"]
                   is not None else "seed spread 0 (both closed-form): the user bootstrap is the evidence; ")
                  + f"paired bootstrap over test users, 95% CI of the gain [{v['bootstrap_95ci_gain'][0]:+.4f}, "
                  f"{v['bootstrap_95ci_gain'][1]:+.4f}]",
                  f"- over neumf: {pct(v['relative_gain_over_neumf'])}; text also ahead on validation: "
                  f"{'yes' if v['text_wins_on_validation'] else 'no'}",
                  f"- shuffled ablation of the best text model (its choices held, profiles permuted): "
                  f"{v['shuffled_full_ndcg@10'][0]:.4f} (loses the gain: {v['shuffle_loses_gain']})",
                  f"- users with 1-3 training interactions: {pct(v['sparsest_bucket_relative_gain'])} relative",
                  *([f"- its text settings, chosen on validation: {choices}"]
                    if (choices := res["rows"][v["best_text"]].get("text_choices")) else []),
                  ""]
        buckets = sorted({b for row in res["rows"].values() for b in row["buckets"]})
        lines += ["### Full-ranking NDCG@10 by user activity (training interactions)", "",
                  "| model | " + " | ".join(f"{b} (n={next(iter(res['rows'].values()))['bucket_sizes'].get(b, 0)})"
                                          for b in buckets) + " |",
                  "|---|" + "---|" * len(buckets)]
        for name, row in res["rows"].items():
            lines.append(f"| {name} | " + " | ".join(f"{row['buckets'].get(b, float('nan')):.4f}" for b in buckets)
                         + " |")
        lines.append("")
        if res["leakage_audit"]:
            lines += ["### Leakage audit (profiles pooled over all reviews, test included; never reported above)",
                      "", "| model | honest | leaky | inflation |", "|---|---|---|---|"]
            for name, a in res["leakage_audit"].items():
                lines.append(f"| {name} | {a['honest_full_ndcg@10']:.4f} | {a['leaky_full_ndcg@10']:.4f} | "
                             f"{pct(a['inflation'])} |")
            lines.append("")
        if res["finetune"]:
            lines += ["### Encoder adaptation (held-out training reviews / training users)", "",
                      "| encoder | steps | what is measured | before → after |", "|---|---|---|---|"]
            for name, f in res["finetune"].items():
                b, a = f["before"], f["after"]
                if "accuracy@1" in b:  # contrastive: anchor's own positive nearest among held-out positives
                    lines.append(f"| {name} | {f['steps']} | contrastive retrieval accuracy@1 (chance "
                                 f"{b.get('chance', float('nan')):.3f}) | {b['accuracy@1']:.3f} → "
                                 f"{a['accuracy@1']:.3f} |")
                else:
                    lines.append(f"| {name} | {f['steps']} | MLM loss; NSP accuracy | {b['mlm_loss']:.3f} → "
                                 f"{a['mlm_loss']:.3f}; {b['nsp_accuracy']:.3f} → {a['nsp_accuracy']:.3f} |")
            lines.append("")
    return "\n".join(lines)


NAMES = {"digital_music": "Digital Music (bundled)", "all_beauty": "All Beauty (53 items)",
         "amazon_fashion": "Fashion (12 items)", "gift_cards": "Gift Cards",
         "leave_one_out": "leave-one-out", "random": "random 70/30"}


def default_cell(v: dict) -> str:
    """The default's gain over the best non-text row with its paired-bootstrap interval (older files: n/a)."""
    if not v.get("default"):
        return "n/a"
    low, high = v["default"]["bootstrap_95ci_gain"]
    return f"{pct(v['default']['relative_gain_over_best_non_text'])} [{low:+.3f}, {high:+.3f}]"


def summary(results: dict) -> list[str]:
    """One line per dataset and protocol: the results table of README.md and docs/results.md."""
    def cell(row: dict) -> str:
        mean, std = row["full"]["ndcg@10"]
        return f"{mean:.3f}" if std < 5e-4 else f"{mean:.3f} ± {std:.3f}"

    lines = ["| dataset / protocol | pop | NeuMF | best non-text | bert_rs_paper (eq. 8) | best neural fusion | "
             "bert_rs (default) | its gain over the best non-text, 95% CI | best text model | its gain, 95% CI | "
             "shuffled | gain on users with 1-3 training items |", "|---|" + "---|" * 11]
    for key, res in results.items():
        rows, v = res["rows"], res["verdict"]
        dataset, protocol = key.split(" / ")
        neural = max((n for n, r in rows.items() if r["model"] == "bert_rs_neural" and not r["shuffle"]),
                     key=lambda n: rows[n]["valid"])
        paper = next(n for n, r in rows.items() if r["model"] == "bert_rs_paper" and not r["shuffle"])
        default = next((n for n in rows if n.startswith("bert_rs@minilm_mean")), None)
        low, high = v["bootstrap_95ci_gain"]
        shuffled = f"{v['shuffled_full_ndcg@10'][0]:.3f}"
        if default and not rows[default]["uses_text"]:
            shuffled = "n/a (the default used no text)"
        elif np.isnan(v["shuffled_full_ndcg@10"][0]) and default and f"{default}{FIXED_SHUFFLE}" in rows:
            # only the default's text models are ablated; say whose shuffle it is when the best text model is another
            shuffled = f"{rows[default + FIXED_SHUFFLE]['full']['ndcg@10'][0]:.3f} (default's)"
        lines.append(
            f"| {NAMES.get(dataset, dataset)} / {NAMES.get(protocol, protocol)} | {cell(rows['pop'])} | "
            f"{cell(rows['neumf'])} | {v['best_non_text']} {cell(rows[v['best_non_text']])} | {cell(rows[paper])} | "
            f"{cell(rows[neural])} | {cell(rows[default]) if default else 'n/a'}"
            f"{'' if not default or rows[default]['uses_text'] else ' (no text used)'} | {default_cell(v)} | "
            f"{v['best_text']} "
            f"{cell(rows[v['best_text']])} | {pct(v['relative_gain_over_best_non_text'])} [{low:+.3f}, {high:+.3f}]"
            f" | {shuffled} | {pct(v['sparsest_bucket_relative_gain'])} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--protocols", default=",".join(PROTOCOLS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=3, choices=range(1, len(SEARCH) + 1))
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--work", default=str(REPO / "build" / "quality"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "quality"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--no-refit", action="store_true", help="score test from the fit to the training pairs "
                        "alone (train.refit_with_validation: false), for the comparison of the two protocols")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    params = with_refit(load_params(args.params), not args.no_refit)
    params = dataclasses.replace(params, prepare=dataclasses.replace(
        params.prepare, min_user_reviews=3, min_item_reviews=3, k_core=True, max_users=None, seed=42))
    work = Path(args.work)
    started = time.perf_counter()
    results = {}
    for dataset in args.datasets.split(","):
        if not DATASETS[dataset].is_file():
            print(f"skip {dataset}: {DATASETS[dataset]} not present", flush=True)
            continue
        protocols = args.protocols.split(",")
        encoders = encoders_for(work, dataset, protocols, params)
        for protocol in protocols:
            results[f"{dataset} / {protocol}"] = run_dataset(work, dataset, protocol, params, args.budget,
                                                             args.seeds, encoders, lambda m: print(m, flush=True))
    meta = {
        "date": date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPU cores, {_memory_gib():.0f} GiB RAM, "
                   f"{platform.processor() or platform.machine()}",
        "command": "python " + " ".join(["benchmarks/quality.py", *sys.argv[1:]]),
        "seeds": args.seeds,
        "budget": args.budget,
        "minutes": (time.perf_counter() - started) / 60,
        "fit_minutes": sum(row.get("seconds", 0.0) for path in work.glob("*/*/" + ledger_file(
            Path(), params.ranking.train.refit_with_validation).name) for row in Ledger(path).rows.values()) / 60,
        "refit_with_validation": params.ranking.train.refit_with_validation,
        "torch": torch.__version__,
    }
    out = Path(args.out)
    for res in results.values():
        for row in res["rows"].values():
            row.pop("per_positive", None)
    write_json(out.with_suffix(".json"), {"meta": meta, "results": results})
    out.with_suffix(".md").write_text(markdown(results, meta))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")


def _memory_gib() -> float:
    import psutil

    return psutil.virtual_memory().total / 2**30


if __name__ == "__main__":
    main()
