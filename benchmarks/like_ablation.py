"""Is a twin's text gain the text-named neighbourhoods' doing? The same knobs with random neighbourhoods, over seeds.

    .venv/bin/python benchmarks/like_ablation.py                   # seeds 0-2, both kinds of neighbourhood
    .venv/bin/python benchmarks/like_ablation.py --seeds 0 1 2 3 4

like_fit.md's Digital Music twin (`generate --like --text real`, fitted knobs) gave bert_rs +0.006 over its
shuffled-profile run, the first twin with a text gain. This benchmark generates that twin at the fitted knobs
(`--knobs`) once per seed and per kind of co-occurrence neighbourhood (pipeline/data/likeness.py,
`LikeSpec.neighbourhoods`): "text", the items whose donors' reviews read alike, and "random", the same share of
co-occurrence with neighbourhoods no review names. Each twin is prepared with params.yaml, encoded in fp32 by the
default mean-pooled encoder (fp32 so that the CPU's int8 path cannot move a choice), and scored for EASE, the default
bert_rs and bert_rs on shuffled profiles (test full-ranking NDCG@10, params.yaml's settings and final fit). If the
gain over the shuffle is the text naming the neighbourhoods, it is there with "text" and gone with "random". Not a
test: results go to benchmarks/results/like_ablation.{json,md}; resumable (each twin's scores are kept under --work).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import mean_cache_of, user_bootstrap, write_report  # noqa: E402
from pipeline.config import RunSpec, load_params  # noqa: E402
from pipeline.data.likeness import NEIGHBOURHOOD_KINDS, LikeSpec, like_records, real_set  # noqa: E402
from pipeline.data.prepare import prepare_dataset  # noqa: E402
from pipeline.data.prepared import load_prepared  # noqa: E402
from pipeline.embeddings.build import build_caches  # noqa: E402
from pipeline.io import read_json, write_json  # noqa: E402
from pipeline.ranking.evaluation.evaluate import full_ranking_mask, rank_full  # noqa: E402
from pipeline.ranking.registry import load_model_profiles  # noqa: E402
from pipeline.ranking.training.train import train  # noqa: E402

FITTED = "topics=16,topic_affinity=0.85,text_fidelity=0.75,cooccurrence=0.35"  # like_fit.md's Digital Music twin
ROWS = {"ease": RunSpec(model="ease"), "bert_rs": RunSpec(model="bert_rs", embeddings="minilm_mean"),
        "bert_rs_shuffled": RunSpec(model="bert_rs", embeddings="minilm_mean", shuffle=True)}


def knobs_of(text: str) -> dict:
    """"topics=16,cooccurrence=0.35" -> {"topics": 16, "cooccurrence": 0.35}."""
    out = {}
    for part in text.split(","):
        key, value = part.split("=")
        out[key.strip()] = int(value) if value.strip().isdigit() else float(value)
    return out


def twin_scores(real, params, knobs: dict, kind: str, seed: int, folder: Path) -> dict:
    """Test full-ranking NDCG@10 per positive of every row on one twin (kept in folder/scores.json)."""
    done = folder / "scores.json"
    if done.is_file():
        return read_json(done)
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    dump = folder / "like.json.gz"
    with gzip.open(dump, "wt", encoding="utf-8") as handle:
        for record in like_records(real, LikeSpec(**knobs, text="real", neighbourhoods=kind, seed=seed)):
            handle.write(json.dumps(record) + "\n")
    config = dataclasses.replace(params.prepare, input=[str(dump)])
    prepare_dataset(config, config.input, folder / "prepared")
    data = load_prepared(folder / "prepared")
    name = mean_cache_of(params)
    cache = folder / "embeddings" / name
    build_caches(data.root, params.encoders[name].model, {name: dataclasses.replace(params.embed_for(name),
                                                                                   backend="torch")},
                 {name: cache}, progress=False)
    profiles = load_model_profiles(cache, data, params.ranking.section("bert_rs"), params.ranking.train,
                                   choosing=True)
    scores = {"users": data.test.users.tolist(), "stats": data.stats["table1"]}
    for row, spec in ROWS.items():
        result = train(spec, params.ranking.override(spec.model), data, profiles if spec.embeddings else None,
                       progress=False)
        ranked = rank_full(result.model, data.test, full_ranking_mask(data, "test"))
        scores[row] = np.where(ranked.ranks < 10, 1.0 / np.log2(ranked.ranks + 2.0), 0.0).tolist()
        if row == "bert_rs":
            scores["bert_rs_choices"] = result.model.choices()
    scores["seconds"] = time.perf_counter() - started
    write_json(done, scores)
    return scores


def run(args) -> dict:
    params = load_params(args.params)
    real = real_set(args.like)
    knobs = knobs_of(args.knobs)
    twins = {}
    for kind in args.kinds:
        for seed in args.seeds:
            s = twin_scores(real, params, knobs, kind, seed, Path(args.work) / f"{kind}_seed{seed}")
            mean = {row: float(np.mean(s[row])) for row in ROWS}
            gain = mean["bert_rs"] - mean["bert_rs_shuffled"]
            twins[f"{kind}/{seed}"] = {"kind": kind, "seed": seed, **mean, "gain_over_shuffle": gain,
                                       "gain_ci": user_bootstrap(s["bert_rs"], s["bert_rs_shuffled"],
                                                                 np.asarray(s["users"])),
                                       "gain_over_ease": mean["bert_rs"] - mean["ease"],
                                       "side_weight": s["bert_rs_choices"]["side_weight"],
                                       "text_weight": s["bert_rs_choices"]["text_weight"],
                                       "stats": s["stats"], "seconds": s["seconds"]}
            print(kind, seed, json.dumps({k: round(v, 4) for k, v in mean.items()}), f"gain {gain:+.4f}", flush=True)
    summary = {}
    for kind in args.kinds:
        gains = [t["gain_over_shuffle"] for t in twins.values() if t["kind"] == kind]
        summary[kind] = {"seeds": len(gains), "mean_gain_over_shuffle": float(np.mean(gains)),
                         "seed_std": float(np.std(gains, ddof=1)) if len(gains) > 1 else None,
                         "positive": sum(g > 0 for g in gains)}
    like = Path(args.like).resolve()
    return {"command": "python benchmarks/like_ablation.py " + " ".join(sys.argv[1:]),
            "like": str(like.relative_to(REPO)) if like.is_relative_to(REPO) else str(like),
            "knobs": knobs, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "twins": twins,
            "summary": summary}


def markdown(report: dict) -> str:
    lines = ["# Text-named neighbourhoods against random ones: the twin's text gain, ablated", "",
             f"Command: `{report['command']}`; {report['date']}. Twins of `{report['like']}` at knobs "
             f"{report['knobs']} (like_fit.md's fitted Digital Music twin), generated with real review text; the only "
             "difference between the two kinds is how co-occurrence neighbourhoods are drawn. Test full-ranking "
             "NDCG@10 (params.yaml's settings, final fit, fp32 vectors); the gain over the shuffle with a 95% paired "
             "bootstrap interval over test users.", "",
             "| neighbourhoods | seed | EASE | bert_rs | bert_rs shuffled | gain over shuffle, 95% CI | "
             "gain over EASE | side weight, text weight |",
             "|---|---|---|---|---|---|---|---|"]
    for t in report["twins"].values():
        lines.append(f"| {t['kind']} | {t['seed']} | {t['ease']:.4f} | {t['bert_rs']:.4f} | "
                     f"{t['bert_rs_shuffled']:.4f} | {t['gain_over_shuffle']:+.4f} [{t['gain_ci'][0]:+.4f}, "
                     f"{t['gain_ci'][1]:+.4f}] | {t['gain_over_ease']:+.4f} | {t['side_weight']:g}, "
                     f"{t['text_weight']:g} |")
    lines += ["", "| neighbourhoods | seeds | mean gain over shuffle | seed std | seeds with a positive gain |",
              "|---|---|---|---|---|"]
    for kind, s in report["summary"].items():
        std = f"{s['seed_std']:.4f}" if s["seed_std"] is not None else "-"
        lines.append(f"| {kind} | {s['seeds']} | {s['mean_gain_over_shuffle']:+.4f} | {std} | {s['positive']} |")
    return "\n".join(lines + [""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--like", default=str(REPO / "data" / "prepared"), help="the real prepared set")
    parser.add_argument("--knobs", default=FITTED, help="the twin's knobs, key=value,...")
    parser.add_argument("--kinds", nargs="+", default=list(NEIGHBOURHOOD_KINDS), choices=list(NEIGHBOURHOOD_KINDS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--work", default=str(REPO / "build" / "like_ablation"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    write_report(args.out, "like_ablation", run(args), markdown)


if __name__ == "__main__":
    main()
