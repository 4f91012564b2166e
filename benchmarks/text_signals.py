"""Which way of reading the review vectors helps a tuned EASE? (issue 7's profile and fusion explorations)

    python benchmarks/quality.py          # first: prepares the data and embedding caches under build/quality/
    python benchmarks/text_signals.py     # then this, in seconds; writes benchmarks/results/text_signals.{md,json}

Every text signal below is computed from *training-split* review vectors only (the minilm_mean cache), for every
user and item, and is judged two ways on full-ranking NDCG@10:

- alone: the signal as the whole ranking (how much preference it carries on its own);
- with EASE: z(EASE) + w z(signal), w picked from a fixed grid (w = 0 is EASE), with a paired bootstrap 95% interval
  (over users) of the gain over EASE and the gain on the sparsest users (1-3 training items).

This is exploration, so it reads the VALIDATION split only: every number here is a validation number (the w it
reports is the best on validation, so its gain is optimistic). The test split is read once, by the quality
benchmark's final table, for the model this exploration led to.

The signals:
- user_profile            cos(mean of the user's review vectors, mean of the item's), both centred
- user_profile_recent     the user's reviews weighted 0.5^(reviews written since), newest counts most
- user_profile_rating     the user's reviews weighted by their star rating
- user_attention          soft-max over the user's reviews of cos(review, item profile), temperature 0.1: each
                          candidate item attends to the reviews that resemble it (NARRE's idea, parameter-free)
- item_neighbours         sum over the user's training items j of cos(item profile j, item profile i)
- side_information        EASE re-solved on X^T X + a m F F^T (a picked on validation), alone: the default bert_rs's
                          first lever; "with EASE" adds it to plain EASE like the others

EASE's lambda is picked on validation from the quality benchmark's grid (its first 3 values, the default budget).
The winners here are the two levers the default bert_rs model combines (pipeline/ranking/models/review_ease.py); the
quality benchmark then tests that model properly, with seeds, shuffles and the other baselines.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import EASE_SEARCH, pct, user_bootstrap  # noqa: E402

BUDGET = 3  # the quality benchmark's default: the first 3 lambdas
from pipeline.data.prepared import load_prepared, load_reviews  # noqa: E402
from pipeline.embeddings.cache import load_review_embeddings  # noqa: E402
from pipeline.io import write_json  # noqa: E402
from pipeline.ranking.models.baselines import ease_weights  # noqa: E402
from pipeline.ranking.evaluation.evaluate import activity_bucket, full_ranking_mask, rank_full  # noqa: E402
from pipeline.ranking.protocol import Scorer  # noqa: E402
from pipeline.ranking.models.review_ease import centred_units, standardise  # noqa: E402

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
SIDE_WEIGHTS = (0.25, 0.5, 1.0, 2.0, 5.0)


class Fixed(Scorer):
    """A precomputed (n_users, n_items) score matrix behind the evaluator's interface."""

    def __init__(self, scores: torch.Tensor) -> None:
        super().__init__()
        self.scores = scores

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        return self.scores[users]


def weighted_profiles(index: np.ndarray, vectors: np.ndarray, n: int, weights: np.ndarray) -> np.ndarray:
    sums = np.zeros((n, vectors.shape[1]))
    np.add.at(sums, index, vectors * weights[:, None])
    totals = np.bincount(index, weights=weights, minlength=n)
    out = sums / np.maximum(totals, 1e-12)[:, None]
    out[totals == 0] = vectors.mean(0)
    return out


def newest_first_rank(users: np.ndarray, times: np.ndarray) -> np.ndarray:
    """For each review, how many reviews its author wrote after it (0 = the newest)."""
    order = np.lexsort((-times, users))
    rank = np.empty(len(users))
    starts = np.r_[0, np.flatnonzero(np.diff(users[order])) + 1]
    position = np.arange(len(users)) - np.repeat(starts, np.diff(np.r_[starts, len(users)]))
    rank[order] = position
    return rank


def signals(data, cache: Path) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(training matrix X, unit centred item profiles F, {name: (n_users, n_items) scores}), training reviews only."""
    table, vectors = load_review_embeddings(cache, data_fingerprint=data.fingerprint)
    reviews = load_reviews(data.root, columns=["review_id", "rating", "time", "split"])
    if not np.array_equal(reviews.column("review_id").to_numpy(), table.column("review_id").to_numpy()):
        raise RuntimeError(f"{cache}: reviews are not in the prepared data's order")
    train = table.column("split").to_numpy(zero_copy_only=False) == "train"
    users = table.column("user_idx").to_numpy()[train].astype(np.int64)
    items = table.column("item_idx").to_numpy()[train].astype(np.int64)
    vecs = vectors[train].astype(np.float64)
    ratings = np.nan_to_num(reviews.column("rating").to_numpy(zero_copy_only=False)[train].astype(float), nan=4.0)
    times = reviews.column("time").to_numpy(zero_copy_only=False)[train]
    n_users, n_items = data.n_users, data.n_items
    x = torch.zeros(n_users, n_items, dtype=torch.float64)
    x[data.train.users, data.train.items] = 1.0
    unit_i = centred_units(weighted_profiles(items, vecs, n_items, np.ones(len(items)))).double()

    def match(user_vectors: np.ndarray) -> torch.Tensor:
        return centred_units(user_vectors).double() @ unit_i.T

    out = {
        "user_profile": match(weighted_profiles(users, vecs, n_users, np.ones(len(users)))),
        "user_profile_recent": match(weighted_profiles(users, vecs, n_users, 0.5 ** newest_first_rank(users, times))),
        "user_profile_rating": match(weighted_profiles(users, vecs, n_users, ratings)),
    }
    unit_reviews = torch.nn.functional.normalize(torch.tensor(vecs) - torch.tensor(vecs).mean(0), dim=-1)
    review_sims = unit_reviews @ unit_i.T  # (reviews, items)
    mass = torch.zeros(n_users, n_items, dtype=torch.float64).index_add_(0, torch.tensor(users),
                                                                        torch.exp(review_sims / 0.1))
    out["user_attention"] = torch.where(mass > 0, 0.1 * torch.log(mass), 0.0)  # soft maximum over the reviews
    neighbours = unit_i @ unit_i.T
    neighbours.fill_diagonal_(0.0)
    out["item_neighbours"] = x @ neighbours
    return x, unit_i, out


def ndcg_per_positive(scores: torch.Tensor, data, split: str, mask) -> np.ndarray:
    ranks = rank_full(Fixed(scores.float()), getattr(data, split), mask).ranks
    return np.where(ranks < 10, 1.0 / np.log2(ranks + 2.0), 0.0)


def run(prepared: Path, cache: Path) -> dict:
    data = load_prepared(prepared)
    mask = full_ranking_mask(data, "valid")  # never reads the test split
    score = lambda s: ndcg_per_positive(s, data, "valid", mask)  # noqa: E731
    x, unit_i, text = signals(data, cache)
    gram = x.T @ x
    ease = max(((score(x @ ease_weights(gram, lam)).mean(), lam) for lam in EASE_SEARCH[:BUDGET]))[1]
    ease_scores = x @ ease_weights(gram, ease)
    side = side_information(x, unit_i, gram, ease, score)
    text["side_information"] = side["scores"]
    sparsest = activity_bucket(np.bincount(data.train.users, minlength=data.n_users))[data.valid.users] == "1-3"
    base = score(ease_scores)
    rows = {"ease": {"valid": float(base.mean()), "lambda": ease}}
    for name, signal in text.items():
        fused_by_weight = {w: score(standardise(ease_scores) + w * standardise(signal)) for w in WEIGHTS}
        best = max(WEIGHTS, key=lambda w: fused_by_weight[w].mean())
        fused = fused_by_weight[best]
        low, high = user_bootstrap(fused.tolist(), base.tolist(), data.valid.users)
        rows[name] = {
            "alone_valid": float(score(signal).mean()), "weight": best,
            "fused_valid": float(fused.mean()), "gain": float(fused.mean() / base.mean() - 1.0),
            "ci": [low, high], "sparsest_gain": float(fused[sparsest].mean() / base[sparsest].mean() - 1.0),
        }
        if name == "side_information":
            rows[name]["side_weight"] = side["side_weight"]
    return rows


def side_information(x, unit, gram, ease_lambda, score) -> dict:
    """EASE on X^T X + a m F F^T, a picked on validation (the default bert_rs's first lever, alone)."""
    text_gram = torch.diagonal(gram).mean() * (unit @ unit.T)
    best = max(SIDE_WEIGHTS, key=lambda a: score(x @ ease_weights(gram + a * text_gram, ease_lambda)).mean())
    return {"side_weight": best, "scores": x @ ease_weights(gram + best * text_gram, ease_lambda)}


def markdown(results: dict) -> str:
    lines = ["# Text signals on top of EASE", "",
             "`python benchmarks/text_signals.py` (after `python benchmarks/quality.py`). Exploration: every number "
             "is full-ranking NDCG@10 on the VALIDATION split (the test split is not read here); every signal from "
             "training reviews only (minilm_mean cache). *alone*: the signal as the ranking. *with EASE*: "
             "z(EASE) + w z(signal) with the best w on validation, so the gain is optimistic; 95% CI: paired "
             "bootstrap over validation users; *1-3*: gain on users with 1-3 training interactions. Deterministic "
             "(no seeds).", ""]
    for key, rows in results.items():
        ease = rows["ease"]
        lines += [f"## {key}", "",
                  f"EASE (lambda {ease['lambda']:g}): valid {ease['valid']:.4f}", "",
                  "| signal | alone (valid) | w | with EASE (valid) | gain | 95% CI | 1-3 |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            if name == "ease":
                continue
            lines.append(f"| {name} | {r['alone_valid']:.4f} | {r['weight']:g} | "
                         f"{r['fused_valid']:.4f} | {pct(r['gain'])} | [{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}] | "
                         f"{pct(r['sparsest_gain'])} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=str(REPO / "build" / "quality"))
    parser.add_argument("--cache", default="minilm_mean")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "text_signals"))
    args = parser.parse_args()
    results = {}
    for prepared in sorted(Path(args.work).glob("*/*/prepared")):
        cache = prepared.parent / "embeddings" / args.cache
        if (cache / "meta.json").is_file():
            key = f"{prepared.parent.parent.name} / {prepared.parent.name}"
            results[key] = run(prepared, cache)
            print(key, {n: round(r.get("gain", 0.0), 4) for n, r in results[key].items()}, flush=True)
    if not results:
        raise SystemExit(f"no prepared data with a {args.cache} cache under {args.work}: run benchmarks/quality.py")
    out = Path(args.out)
    write_json(out.with_suffix(".json"), results)
    out.with_suffix(".md").write_text(markdown(results))
    print(f"wrote {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
