"""What an encoder backend costs in quality: the default bert_rs row on caches encoded in fp32 and in int8.

    .venv/bin/python benchmarks/backend_quality.py                       # every shared set, both protocols
    .venv/bin/python benchmarks/backend_quality.py --datasets digital_music --protocols leave_one_out

For each dataset and protocol it takes quality.py's prepared data (build/quality, prepared if absent), encodes the
reviews with the default mean-pooled encoder (params `minilm_mean`) once per backend (`--backends`, default torch =
fp32 and openvino_int8), trains the default bert_rs on each cache and EASE beside them, all with params.yaml's
settings (search, choice rule, final fit on training + validation pairs), and scores test full-ranking NDCG@10.
It reports each backend's cosine to fp32 on the cache's check sample, encoding time, bert_rs's choices, its test
NDCG@10 and gain over EASE, and the int8 - fp32 difference with a 95% interval from a paired bootstrap over test
users. Not a test: results go to benchmarks/results/backend_quality.{json,md}. Resumable: caches and scores already
written under --work are reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmarks.common import (  # noqa: E402
    DATASETS, PROTOCOLS, mean_cache_of, prepared_for, user_bootstrap, uses_text, write_report)
from pipeline.config import RunSpec, load_params  # noqa: E402
from pipeline.embeddings.build import build_caches  # noqa: E402
from pipeline.embeddings.cache import read_meta  # noqa: E402
from pipeline.io import read_json, write_json  # noqa: E402
from pipeline.ranking.evaluation.evaluate import full_ranking_mask, rank_full  # noqa: E402
from pipeline.ranking.registry import load_model_profiles  # noqa: E402
from pipeline.ranking.training.train import train  # noqa: E402


QUALITY_SETS = ("digital_music", "gift_cards", "all_beauty")  # the sets of quality.md


def encoded(work: Path, dataset: str, protocol: str, params, backend: str, data) -> Path:
    """The mean-pooled cache of `data` encoded with `backend` (built once)."""
    name = mean_cache_of(params)
    out = work / dataset / protocol / backend
    if not (out / "meta.json").is_file():
        config = dataclasses.replace(params.embed_for(name), backend=backend)
        started = time.perf_counter()
        build_caches(data.root, params.encoders[name].model, {name: config}, {name: out}, progress=False)
        write_json(out.parent / f"{backend}.seconds.json", {"seconds": time.perf_counter() - started})
    return out


def scored(path: Path, model: str, params, data, profiles=None) -> dict:
    """Test full-ranking NDCG@10 per positive of `model` trained with params.yaml's settings (kept in `path`)."""
    if path.is_file():
        return read_json(path)
    result = train(RunSpec(model=model), params.ranking.override(model), data, profiles, progress=False)
    ranked = rank_full(result.model, data.test, full_ranking_mask(data, "test"))
    per_positive = np.where(ranked.ranks < 10, 1.0 / np.log2(ranked.ranks + 2.0), 0.0)
    row = {"test_full_ndcg@10": float(per_positive.mean()), "per_positive": per_positive.tolist(),
           "choices": result.model.choices() if hasattr(result.model, "choices") else None}
    write_json(path, row)
    return row


def run(args) -> dict:
    params = load_params(args.params)
    results = {}
    for dataset in args.datasets:
        for protocol in args.protocols:
            data = prepared_for(Path(args.quality_work), dataset, protocol, params)
            folder = Path(args.work) / dataset / protocol
            ease = scored(folder / "ease.json", "ease", params, data)
            row = {"ease": ease["test_full_ndcg@10"], "backends": {}}
            for backend in args.backends:
                cache = encoded(Path(args.work), dataset, protocol, params, backend, data)
                profiles = load_model_profiles(cache, data, params.ranking.section("bert_rs"), params.ranking.train,
                                               choosing=True)
                bert_rs = scored(folder / f"bert_rs@{backend}.json", "bert_rs", params, data, profiles)
                meta = read_meta(cache)
                row["backends"][backend] = {
                    "chosen_backend": meta["backend"], "backend_check": meta["backend_check"],
                    "encode_seconds": read_json(folder / f"{backend}.seconds.json")["seconds"],
                    "bert_rs": bert_rs["test_full_ndcg@10"], "choices": bert_rs["choices"],
                    "gain_over_ease": bert_rs["test_full_ndcg@10"] / ease["test_full_ndcg@10"] - 1.0,
                    "per_positive": bert_rs["per_positive"]}
            reference, *others = args.backends
            for backend in others:
                a, b = row["backends"][backend]["per_positive"], row["backends"][reference]["per_positive"]
                row["backends"][backend]["minus_reference"] = float(np.mean(a) - np.mean(b))
                row["backends"][backend]["minus_reference_ci"] = user_bootstrap(a, b, data.test.users)
            for entry in row["backends"].values():
                del entry["per_positive"]
            results[f"{dataset}/{protocol}"] = row
            print(dataset, protocol, json.dumps({k: v["bert_rs"] for k, v in row["backends"].items()}), flush=True)
    return {"command": "python benchmarks/backend_quality.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "load_average_at_end": os.getloadavg()[0]},
            "reference": args.backends[0], "results": results}


def markdown(report: dict) -> str:
    reference = report["reference"]
    lines = ["# What an encoder backend costs in quality", "",
             f"Command: `{report['command']}`; {report['date']}, {report['machine']['cores']} cores. The default "
             "bert_rs row (params.yaml's settings, final fit on training + validation pairs) on the mean-pooled MiniLM "
             "cache encoded with each backend; EASE beside it. Test full-ranking NDCG@10; the difference to "
             f"{reference} with a 95% paired bootstrap interval over test users.", "",
             "| dataset / protocol | EASE | backend (chosen) | cosine to fp32 (mean, min) | encode s | bert_rs | "
             "gain over EASE | text used | minus " + reference + ", 95% CI |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, row in report["results"].items():
        for backend, entry in row["backends"].items():
            check = entry["backend_check"]
            cosine = (f"{check['cosine_mean']:.4f}, {check['cosine_min']:.4f}" if "cosine_mean" in check
                      else "reference")
            text = "yes" if uses_text(entry["choices"]) else "no (plain EASE)"
            diff = ("" if "minus_reference" not in entry else
                    f"{entry['minus_reference']:+.4f} [{entry['minus_reference_ci'][0]:+.4f}, "
                    f"{entry['minus_reference_ci'][1]:+.4f}]")
            lines.append(f"| {key} | {row['ease']:.4f} | {backend} ({entry['chosen_backend']}) | {cosine} | "
                         f"{entry['encode_seconds']:.0f} | {entry['bert_rs']:.4f} | {entry['gain_over_ease']:+.1%} | "
                         f"{text} | {diff} |")
    lines += ["", "Choices per row are in backend_quality.json.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=[d for d in QUALITY_SETS if DATASETS[d].is_file()],
                        choices=list(DATASETS), help="default: quality.md's sets that are present")
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    parser.add_argument("--backends", nargs="+", default=["torch", "openvino_int8"],
                        help="the first is the reference the others are compared with")
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--quality-work", default=str(REPO / "build" / "quality"), help="quality.py's work folder")
    parser.add_argument("--work", default=str(REPO / "build" / "backend_quality"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    write_report(args.out, "backend_quality", run(args), markdown)


if __name__ == "__main__":
    main()
