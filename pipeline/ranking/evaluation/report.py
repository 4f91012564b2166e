"""Turning evaluation results into the comparison table (the paper's Table 2 layout) and per-K plot points.

`results` maps a run name to what `pipeline.ranking.evaluation.evaluate.evaluate` returned, plus "model" and "cache"
keys.
"""

from __future__ import annotations

from typing import Sequence

from pipeline.ranking.evaluation.evaluate import BUCKETS


def _fmt(value) -> str:
    return "-" if value is None or value != value else f"{value:.4f}"


def _columns(ks: Sequence[int]) -> list[tuple[str, str]]:
    """Paper order: HR@10 NDCG@10 HR@5 NDCG@5 ... (K descending)."""
    return [(f"{m.upper() if m == 'hr' else 'NDCG'}@{k}", f"{m}@{k}") for k in sorted(ks, reverse=True)
            for m in ("hr", "ndcg")]


def comparison_markdown(results: dict[str, dict], ks: Sequence[int], protocols: Sequence[str], split: str) -> str:
    """One Markdown table per protocol (rows: runs), then the activity-bucket table per protocol."""
    cols = _columns(ks)
    lines = [f"# Ranking comparison ({split} split)", ""]
    for protocol in protocols:
        lines += [f"## {protocol} protocol", ""]
        lines.append("| Run | Model | " + " | ".join(c for c, _ in cols) + " | Cache |")
        lines.append("|" + "---|" * (len(cols) + 3))
        for run, res in results.items():
            metrics = res.get(protocol, {})
            cells = [_fmt(metrics.get(key)) for _, key in cols]
            model = str(res.get("model", "")) + (" (shuffled profiles)" if res.get("shuffle") else "")
            lines.append(f"| {run} | {model} | " + " | ".join(cells) + f" | {res.get('cache') or '-'} |")
        lines.append("")
    k = 10 if 10 in ks else max(ks)
    for protocol in protocols:
        lines += [f"## {protocol} protocol by user activity (training interactions), HR@{k} / NDCG@{k} (n)", ""]
        present = {b for res in results.values() for b in res.get("buckets", {}).get(protocol, {})}
        names = [name for name, _, _ in BUCKETS if name in present]
        lines.append("| Run | " + " | ".join(names) + " |")
        lines.append("|" + "---|" * (len(names) + 1))
        for run, res in results.items():
            buckets = res.get("buckets", {}).get(protocol, {})
            cells = [
                f"{_fmt(buckets[b][f'hr@{k}'])} / {_fmt(buckets[b][f'ndcg@{k}'])} ({buckets[b]['n']})"
                if b in buckets else "-"
                for b in names
            ]
            lines.append(f"| {run} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def at_k_rows(result: dict, ks: Sequence[int], protocols: Sequence[str]) -> list[dict]:
    """One run's metrics against K, one row per K (columns hr_<protocol>, ndcg_<protocol>), for `dvc plots`."""
    return [
        {"k": k, **{f"{m}_{p}": result[p][f"{m}@{k}"] for p in protocols if p in result for m in ("hr", "ndcg")}}
        for k in sorted(ks)
    ]
