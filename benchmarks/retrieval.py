"""Retrieval at catalogue size: approximate FAISS indexes against exact search on generated item vectors.

    python benchmarks/retrieval.py                  # 1M items x 384 dims, hnsw and ivf (about an hour on 2 cores)
    python benchmarks/retrieval.py --items 100000 --types hnsw --ef-construction 40 200 --out \
        benchmarks/results/retrieval_build_width      # what the wide build buys

Vectors have cluster structure like pooled review vectors (a mixture of `clusters` centres, each point its centre
plus a low-rank spread plus isotropic noise), unit-normalised; queries are fresh draws from the same mixture.
For each index type built by `pipeline.embeddings.index.build_index` (cosine metric, the embed stage's default):
recall@100 against `IndexFlatIP` (the share of the exact top 100 the index returns), single-query latency (p50,
p99, one query at a time on one thread, as a request would arrive), build time, and memory (RSS growth while
building, and the serialised index size). Targets (issue 14): recall@100 >= 0.95, p99 <= 10 ms.

Writes benchmarks/results/retrieval.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import date, datetime, timezone
from pathlib import Path

import faiss
import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.embeddings.index import IndexChoice, build_index, index_type, search, write_index  # noqa: E402
from pipeline.io import write_json  # noqa: E402

K = 100


def clustered_vectors(n: int, dim: int, clusters: int, rank: int, seed: int) -> np.ndarray:
    """(n, dim) float32 unit rows: centre + a shared low-rank spread + noise, generated in blocks."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    spread = rng.standard_normal((rank, dim)).astype(np.float32) / np.sqrt(rank)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        block = 0.7 * centres[rng.integers(0, clusters, m)]
        block += 0.8 * rng.standard_normal((m, rank), dtype=np.float32) @ spread
        block += 0.3 * rng.standard_normal((m, dim), dtype=np.float32)
        out[start : start + m] = block
    faiss.normalize_L2(out)
    return out


def exact_top(items: np.ndarray, queries: np.ndarray) -> np.ndarray:
    exact = faiss.IndexFlatIP(items.shape[1])
    exact.add(items)
    scores, ids = exact.search(queries, K)
    print(f"exact neighbours: mean cosine of the 1st {scores[:, 0].mean():.3f}, "
          f"of the 100th {scores[:, -1].mean():.3f}")
    return ids, scores


def measure(items: np.ndarray, queries: np.ndarray, truth: np.ndarray, choice: IndexChoice,
            sweep: list[int]) -> list[dict]:
    """Build once, then one row per search setting (IVF: nprobe; HNSW: efSearch) from `sweep`."""
    process = psutil.Process()
    rss0 = process.memory_info().rss
    t0 = time.perf_counter()
    index = build_index(items, "cosine", choice)
    build_s = time.perf_counter() - t0
    rss_growth = process.memory_info().rss - rss0
    with tempfile.TemporaryDirectory() as tmp:
        write_index(index, Path(tmp) / "items.faiss")
        size = (Path(tmp) / "items.faiss").stat().st_size
    kind = index_type(index)
    rows = []
    for setting in (sweep if kind != "flat" else [0]):
        if kind == "ivf":
            index.nprobe = setting
        elif kind == "hnsw":
            index.hnsw.efSearch = setting
        _, found = search(index, queries, K)
        recall = float(np.mean([len(np.intersect1d(f, t)) / K for f, t in zip(found, truth)]))
        faiss.omp_set_num_threads(1)
        latencies = []
        for q in queries:
            t = time.perf_counter()
            search(index, q, K)
            latencies.append((time.perf_counter() - t) * 1000)
        faiss.omp_set_num_threads(os.cpu_count() or 1)
        row = {
            "index": kind,
            "recall@100": round(recall, 4),
            "p50_ms": round(float(np.percentile(latencies, 50)), 3),
            "p99_ms": round(float(np.percentile(latencies, 99)), 3),
            "build_s": round(build_s, 1),
            "rss_growth_mb": round(rss_growth / 2**20),
            "index_file_mb": round(size / 2**20),
        }
        if kind == "ivf":
            row.update(nlist=index.nlist, nprobe=setting)
        if kind == "hnsw":
            row.update(hnsw_m=choice.hnsw_m, ef_construction=choice.ef_construction, ef_search=setting)
        print(row, flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=2000)
    parser.add_argument("--types", nargs="+", default=["hnsw", "ivf"], choices=["flat", "ivf", "hnsw"])
    parser.add_argument("--nprobe", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--ef-search", type=int, nargs="+", default=[128, 256, 512])
    parser.add_argument("--nlist", type=int, default=None, help="IVF cells (default 2 sqrt(items))")
    parser.add_argument("--ef-construction", type=int, nargs="+", default=[IndexChoice().ef_construction],
                        help="HNSW build widths, one build each (default: the embed stage's)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "retrieval")
    args = parser.parse_args()

    load_at_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    items = clustered_vectors(args.items, args.dim, args.clusters, rank=32, seed=0)
    queries = _fresh_queries(args)
    print(f"generated {items.shape} in {time.perf_counter() - t0:.0f}s", flush=True)
    t0 = time.perf_counter()
    truth, truth_scores = exact_top(items, queries)
    exact_s = time.perf_counter() - t0
    print(f"exact top-{K} of {args.queries} queries in {exact_s:.1f}s", flush=True)

    rows = []
    for kind in args.types:
        sweep = args.nprobe if kind == "ivf" else args.ef_search
        for width in (args.ef_construction if kind == "hnsw" else [IndexChoice().ef_construction]):
            choice = IndexChoice(index_type=kind, nlist=args.nlist, ef_construction=width)
            rows += measure(items, queries, truth, choice, sweep)
    result = {
        "date": date.today().isoformat(),
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "faiss": faiss.__version__,
                    "load_average_at_start": round(load_at_start, 1),
                    "load_average_at_end": round(os.getloadavg()[0], 1)},
        "command": "python benchmarks/retrieval.py " + " ".join(sys.argv[1:]),
        "items": args.items, "dim": args.dim, "queries": args.queries, "clusters": args.clusters, "k": K,
        "exact_batch_search_s": round(exact_s, 1),
        # how tight the neighbourhoods are (harder for an approximate index the closer the 1st and 100th are)
        "mean_cosine_top1": round(float(truth_scores[:, 0].mean()), 3),
        "mean_cosine_top100": round(float(truth_scores[:, -1].mean()), 3),
        "targets": {"recall@100": 0.95, "p99_ms": 10.0},
        "rows": rows,
    }
    write_json(args.out.with_suffix(".json"), result)
    args.out.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {args.out}.{{json,md}}")


def _fresh_queries(args) -> np.ndarray:
    """Queries from the same mixture as the items (same centres and spread), new noise: the item generator with the
    same seed replays the centres, then a second generator draws the points."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((args.clusters, args.dim)).astype(np.float32)
    spread = rng.standard_normal((32, args.dim)).astype(np.float32) / np.sqrt(32)
    fresh = np.random.default_rng(1)
    q = 0.7 * centres[fresh.integers(0, args.clusters, args.queries)]
    q += 0.8 * fresh.standard_normal((args.queries, 32), dtype=np.float32) @ spread
    q += 0.3 * fresh.standard_normal((args.queries, args.dim), dtype=np.float32)
    faiss.normalize_L2(q)
    return q


def markdown(result: dict) -> str:
    lines = [
        f"# Retrieval at catalogue size ({result['date']})",
        "",
        f"`{result['command']}` on {result['machine']['cpus']} CPUs ({result['machine']['platform']}, "
        f"FAISS {result['machine']['faiss']}; load average {result['machine']['load_average_at_start']} at start, "
        f"{result['machine']['load_average_at_end']} at the end).",
        "",
        f"{result['items']:,} generated item vectors x {result['dim']} dims ({result['clusters']} clusters, low-rank "
        f"spread, unit length), {result['queries']} fresh queries from the same mixture, cosine metric. Recall@100 "
        "is against exact `IndexFlatIP` search (batch exact search of all queries: "
        f"{result['exact_batch_search_s']} s). "
        f"Mean cosine of a query's exact 1st / 100th neighbour: {result['mean_cosine_top1']} / "
        f"{result['mean_cosine_top100']}. Latency: one query at a time on one thread. Targets: recall@100 >= 0.95, "
        "p99 <= 10 ms.",
        "",
        "| index | settings | recall@100 | p50 ms | p99 ms | build s | RSS growth MB | file MB | meets targets |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        settings = (f"nlist {row['nlist']}, nprobe {row['nprobe']}" if row["index"] == "ivf"
                    else f"M {row['hnsw_m']}, efConstruction {row['ef_construction']}, efSearch {row['ef_search']}"
                    if row["index"] == "hnsw" else "exact")
        ok = row["recall@100"] >= 0.95 and row["p99_ms"] <= 10.0
        lines.append(f"| {row['index']} | {settings} | {row['recall@100']} | {row['p50_ms']} | {row['p99_ms']} | "
                     f"{row['build_s']} | {row['rss_growth_mb']} | {row['index_file_mb']} | {'yes' if ok else 'no'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
