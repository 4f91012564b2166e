"""`bertrs finetune`: adapt one named encoder to the training reviews (MLM+NSP or contrastive), or pass it through.

    bertrs finetune --prepared data/prepared --encoder minilm --out data/encoders/minilm \
        --metrics metrics/finetune/minilm.json --params params.yaml

Reads `encoders.<name>` (EncoderSpec) and `finetune` (FinetuneConfig). Fine-tuning runs only when both
`finetune.enabled` and `encoders.<name>.finetune` are true, with `encoders.<name>.objective`; otherwise the base
checkpoint is passed through. With `encoders.<name>.static: true` the transformer so written (to `<out>.work/`) is
then distilled into a static encoder (pipeline/text/static.py), which is what `<out>` holds.
Checkpoints for resuming live in `<out>.work/` (outside the DVC output); rerunning the same command after an
interruption (kill -9 included) resumes and ends with the same bytes as an uninterrupted run.

The same command runs on several processes (GPUs, or CPU processes over gloo) through the HF Trainer's DDP;
only the first process writes the folder and the metrics:

    torchrun --nproc_per_node 2 $(which bertrs) finetune --prepared data/prepared --encoder minilm_ft ...
    accelerate launch --num_processes 2 $(which bertrs) finetune --prepared data/prepared --encoder minilm_ft ...
"""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.config import ConfigError
from pipeline.data.prepared import load_reviews
from pipeline.io import DataError, write_json
from pipeline.text.contrastive import PAIR_COLUMNS, contrastive_finetune
from pipeline.launch import is_main_process
from pipeline.text.encoders import resolve_encoder
from pipeline.text.encoders import weights_fingerprint
from pipeline.text.finetune import finetune_encoder, pass_through
from pipeline.text.static import distill_static, remove_work
from stages.common import PARAMS_OPTION, read_params, user_errors


@user_errors
def main(
    prepared: Path = typer.Option(..., "--prepared", help="prepared-data folder (from `bertrs prepare`)"),
    encoder: str = typer.Option(..., "--encoder", help="encoder name: a key of params `encoders`"),
    out: Path = typer.Option(..., "--out", help="output folder for the encoder (model + tokenizer)"),
    metrics: Path = typer.Option(..., "--metrics", help="metrics JSON (before/after MLM+NSP or retrieval metrics)"),
    params: Path = PARAMS_OPTION,
) -> None:
    """Fine-tune an encoder on training-split reviews (MLM+NSP or contrastive), or pass the base checkpoint through."""
    config = read_params(params)
    if encoder not in config.encoders:
        raise ConfigError(f"encoders.{encoder}: not defined in {params} (known: {sorted(config.encoders)})")
    spec = config.encoders[encoder]
    try:  # a mistyped model is named by its setting, before any data is read
        resolve_encoder(spec.model)
    except DataError as error:
        raise DataError(f"{params}: encoders.{encoder}.model: {error}") from None
    reason = config.finetune_reason(encoder)
    transformer = Path(f"{out}.work") / "transformer" if spec.static else out  # a static encoder distils it next
    if reason is not None:
        if not is_main_process():
            return
        result = pass_through(spec.model, transformer, reason)
    elif spec.objective == "contrastive":
        reviews = load_reviews(prepared, columns=list(PAIR_COLUMNS))
        result = contrastive_finetune(reviews, spec.model, transformer, config.finetune)
    else:
        reviews = load_reviews(prepared, columns=["review_id", "text", "split"])
        result = finetune_encoder(reviews, spec.model, transformer, config.finetune)
    if not is_main_process():
        return
    if spec.static:
        distill_static(transformer, out, source={key: result.get(key) for key in ("base", "finetuned")})
        result["static"] = {"distilled_from_weights_fingerprint": result.get("weights_fingerprint"),
                            "weights_fingerprint": weights_fingerprint(out)}
        result["note"] = f"{result.get('note', '')}; then distilled into a static encoder (model2vec)".lstrip("; ")
        result["weights_fingerprint"] = result["static"]["weights_fingerprint"]
        remove_work(transformer.parent)
    result["encoder"] = encoder
    write_json(metrics, result)
    typer.echo(f"encoder {encoder} -> {out} (finetuned: {result['finetuned']}); metrics -> {metrics}")
