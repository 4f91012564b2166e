"""`bertrs serve`: the trained model over HTTP, with a page at `/` (needs the serve extra: pip install -e ".[serve]").

    bertrs serve --model-dir data/models/bert_rs                      # http://127.0.0.1:8000/ and /docs
    bertrs serve --model-dir /abs/path/data/models/bert_rs --port 9000 --prepared ... --embeddings ...
    bertrs serve --model-dir data/models/bert_rs --workers 2           # one process per core

The model, its cache and the prepared ids are loaded and cross-checked once, before the port opens: a model whose
cache or prepared data does not match stops here with the reason (exit 2), not at the first request.

With `--workers N > 1`, uvicorn starts N processes that share one listening socket (whichever is free accepts the
next connection). Each worker imports `stages.serve:worker_app`, which loads its own copy of the model from the
settings this command checked and put in the BERTRS_SERVE_SETTINGS environment variable; memory is N copies of the
model, its cache and the encoder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from pipeline.io import DataError
from stages.common import user_errors
from stages.recommend import SERVING_PARAMS_OPTION, recommend_settings

SERVE_SETTINGS = "BERTRS_SERVE_SETTINGS"  # JSON: load_served's arguments and torch threads, for each worker
WORKER_HEALTHCHECK_S = 300  # how long a worker may take to load the model or to answer a ping before it is replaced
EXTRA_HINT = 'bertrs serve needs the serve extra: pip install -e ".[serve]" (fastapi, uvicorn)'


def require_serve_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise DataError(f"{EXTRA_HINT}; missing: {error.name}") from None


@user_errors
def main(
    model_dir: Path = typer.Option(..., help="a run folder written by `bertrs train`"),
    host: str = typer.Option("127.0.0.1", help="interface to listen on (0.0.0.0 exposes it to the network)"),
    port: int = typer.Option(8000, help="TCP port"),
    prepared: Optional[Path] = typer.Option(
        None, help="prepared-data folder [default: data/prepared, here or in the model folder's project]"),
    embeddings: Optional[Path] = typer.Option(None, help="override the cache folder recorded in the checkpoint"),
    encoder_dir: Optional[str] = typer.Option(None, help="override the encoder folder recorded in the cache (/search)"),
    search: bool = typer.Option(True, "--search/--no-search", help="load the encoder for /search"),
    threads: int = typer.Option(1, help="torch threads per request (small models answer fastest with 1)"),
    workers: int = typer.Option(1, help="server processes, each with its own copy of the model (about one per core)"),
    params: Optional[Path] = SERVING_PARAMS_OPTION,
) -> None:
    """Serve /recommend, /similar, /search, /health, OpenAPI docs at /docs and a page at /."""
    require_serve_extra()
    import uvicorn

    if threads < 1:
        raise DataError(f"--threads: must be >= 1, got {threads}")
    if workers < 1:
        raise DataError(f"--workers: must be >= 1, got {workers}")
    if not 0 < port < 65536:
        raise DataError(f"--port: must lie in 1..65535, got {port}")
    config = recommend_settings(params)
    settings = {"model_dir": str(model_dir), "prepared": str(prepared) if prepared else None,
                "cache": str(embeddings) if embeddings else None, "encoder_dir": encoder_dir,
                "search": search, "candidates": config.candidates, "popular_fallback": config.popular_fallback,
                "threads": threads}
    served = _load(settings)  # every check happens here, before a port opens or a worker starts
    typer.echo(f"serving {served.run} ({served.checkpoint.spec.model}) on http://{host}:{port}/  (docs: /docs)"
               + (f" with {workers} workers" if workers > 1 else ""))
    if workers == 1:
        from pipeline.serve.app import create_app

        uvicorn.run(create_app(served), host=host, port=port, log_level="warning")
        return
    del served  # each worker loads its own copy
    os.environ[SERVE_SETTINGS] = json.dumps(settings)
    # a worker answers the supervisor's pings only between loading steps: on a busy machine loading takes far longer
    # than uvicorn's 5 s default, and a worker killed for it is restarted, killed again, and never serves
    uvicorn.run("stages.serve:worker_app", factory=True, workers=workers, host=host, port=port, log_level="warning",
                timeout_worker_healthcheck=WORKER_HEALTHCHECK_S)


def _load(settings: dict):
    import torch

    from pipeline.serve.model import load_served

    torch.set_num_threads(settings["threads"])
    return load_served(settings["model_dir"], settings["prepared"], settings["cache"], settings["encoder_dir"],
                       search=settings["search"], candidates=settings["candidates"],
                       popular_fallback=settings["popular_fallback"])


def worker_app():
    """The app of one uvicorn worker process, built from the settings `main` checked and exported."""
    from pipeline.serve.app import create_app

    if SERVE_SETTINGS not in os.environ:
        raise RuntimeError(f"{SERVE_SETTINGS} is not set: start workers with `bertrs serve --workers N`")
    return create_app(_load(json.loads(os.environ[SERVE_SETTINGS])))
