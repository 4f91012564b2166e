"""`bertrs serve`: the trained model over HTTP, with a page at `/` (needs the serve extra: pip install -e ".[serve]").

    bertrs serve --model-dir data/models/bert_rs                      # http://127.0.0.1:8000/ and /docs
    bertrs serve --model-dir /abs/path/data/models/bert_rs --port 9000 --prepared ... --embeddings ...

The model, its cache and the prepared ids are loaded and cross-checked once, before the port opens: a model whose
cache or prepared data does not match stops here with the reason (exit 2), not at the first request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pipeline.config import RecommendConfig
from pipeline.io import DataError
from stages.common import PARAMS_OPTION, read_params, user_errors

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
    params: Path = PARAMS_OPTION,
) -> None:
    """Serve /recommend, /similar, /search, /health, OpenAPI docs at /docs and a page at /."""
    require_serve_extra()
    import torch
    import uvicorn

    from pipeline.serve.app import create_app
    from pipeline.serve.model import load_served

    if threads < 1:
        raise DataError(f"--threads: must be >= 1, got {threads}")
    if not 0 < port < 65536:
        raise DataError(f"--port: must lie in 1..65535, got {port}")
    torch.set_num_threads(threads)
    config = read_params(params).recommend if params.is_file() else RecommendConfig()
    served = load_served(model_dir, prepared, embeddings, encoder_dir, search=search,
                         candidates=config.candidates, popular_fallback=config.popular_fallback)
    typer.echo(f"serving {served.run} ({served.checkpoint.spec.model}) on http://{host}:{port}/  (docs: /docs)")
    uvicorn.run(create_app(served), host=host, port=port, log_level="warning")
