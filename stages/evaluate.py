"""`bertrs evaluate`: score every trained run on one split under the sampled and full-ranking protocols.

    bertrs evaluate --prepared data/prepared --models data/models --metrics metrics.json \
        --table reports/comparison.md --plots-dir reports/at_k --params params.yaml --split test

Every folder under --models holding a run.json is one run. Text runs reload the embedding cache recorded in their
run.json, whose fingerprint must still match. Writes metrics.json (run -> protocol -> metric@K, plus the cache each
run used), the Markdown comparison (the paper's Table 2 layout, one table per protocol, plus user-activity
buckets), and per-K plot points.
"""

from __future__ import annotations

import csv
from pathlib import Path

import typer

from pipeline.data.prepared import load_prepared
from pipeline.io import DataError, atomic_dir, atomic_path, write_json
from pipeline.ranking.evaluation.evaluate import evaluate
from pipeline.ranking.evaluation.report import at_k_rows, comparison_markdown
from pipeline.ranking.checkpoint import RUN_FILE, check_split_unseen, learned_from, load_checkpoint
from stages.common import PARAMS_OPTION, read_params, user_errors


def find_runs(models: Path) -> list[Path]:
    """Run folders (those with a run.json) under `models`, in sorted order."""
    if not models.is_dir():
        raise DataError(f"{models}: models folder not found (run `bertrs train` first)")
    runs = sorted(p.parent for p in models.rglob(RUN_FILE) if not any(part.startswith(".") for part in p.parts))
    if not runs:
        raise DataError(f"{models}: no run folders (none holds a {RUN_FILE})")
    return runs


@user_errors
def main(
    prepared: Path = typer.Option(Path("data/prepared"), help="prepared-data folder"),
    models: Path = typer.Option(Path("data/models"), help="folder of run folders (each with run.json)"),
    metrics: Path = typer.Option(Path("metrics.json"), help="metrics JSON to write (DVC metrics)"),
    table: Path = typer.Option(Path("reports/comparison.md"), help="Markdown comparison table to write"),
    plots_dir: Path = typer.Option(Path("reports/at_k"), "--plots-dir", help="folder of per-run CSVs: k, hr_*, ndcg_*"),
    params: Path = PARAMS_OPTION,
    split: str = typer.Option("test", help="valid | test (valid: runs trained with train.refit_with_validation "
                                "false; the others record their validation numbers in run.json)"),
    every_folder: bool = typer.Option(False, "--every-folder", help="evaluate every run folder under --models, "
                                      "not only the runs listed in params.yaml (for runs trained outside the DAG)"),
) -> None:
    """Evaluate every run on the same candidates with the same code."""
    if split not in ("valid", "test"):
        raise DataError(f"--split: {split!r} is not valid | test")
    all_params = read_params(params)
    config = all_params.evaluate
    data = load_prepared(prepared)
    results: dict[str, dict] = {}
    folders = find_runs(models)
    listed = all_params.all_runs()  # runs, then text_runs
    if not every_folder and listed:  # the table is the runs params.yaml lists, nothing stale beside them
        missing = [name for name in listed if not (models / name / RUN_FILE).is_file()]
        if missing:
            raise DataError(f"{models}: no trained run for {missing} (listed under runs or text_runs in {params})")
        folders = [models / name for name in listed]
    for folder in folders:
        ckpt = load_checkpoint(folder, data)
        check_split_unseen(ckpt.info, split, str(folder / RUN_FILE))
        name = ckpt.info.get("run") or str(folder.relative_to(models))
        if name in results:
            name = str(folder.relative_to(models))
        embeddings = ckpt.info.get("embeddings") or {}
        # a run fitted on validation pairs knows them: they are masked at test whatever mask_other_splits says
        mask_valid = config.mask_other_splits or learned_from(ckpt.info, "valid")
        res = evaluate(ckpt.model, data, split, config.ks, config.protocols, config.batch_users, mask_valid)
        results[name] = {
            "model": ckpt.spec.model,
            "shuffle": ckpt.spec.shuffle,
            "split": split,
            "cache": embeddings.get("path"),
            "cache_fingerprint": embeddings.get("fingerprint"),
            **res,
        }
        typer.echo(f"{name}: " + ", ".join(f"{p} ndcg@10={res[p].get('ndcg@10', float('nan')):.4f}"
                                            for p in config.protocols))
    write_json(metrics, results)
    with atomic_path(table) as tmp:
        tmp.write_text(comparison_markdown(results, config.ks, config.protocols, split))
    with atomic_dir(plots_dir) as tmp:
        for name, result in results.items():
            rows = at_k_rows(result, config.ks, config.protocols)
            with open(tmp / f"{name.replace('/', '_')}.csv", "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    typer.echo(f"{len(results)} runs -> {metrics}, {table}, {plots_dir}/")
