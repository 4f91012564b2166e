"""What every stage shares: loading `params.yaml` and turning library errors into one clear message."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Callable, TypeVar

import pyarrow as pa
import typer

from pipeline.config import ConfigError, Params, load_params
from pipeline.io import DataError

F = TypeVar("F", bound=Callable)

DEFAULT_PARAMS = Path("params.yaml")
PARAMS_OPTION = typer.Option(DEFAULT_PARAMS, "--params", help="params.yaml to read (one section per stage)")


def user_errors(func: F) -> F:
    """Report a bad parameter or bad input as one line on stderr and exit 2, instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it logs every CPU variant it tries
        try:
            return func(*args, **kwargs)
        except (ConfigError, DataError, FileNotFoundError) as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(code=2) from None
        except pa.ArrowException as error:  # a damaged Parquet file read where no reader above names it
            typer.echo(f"error: a Parquet file could not be read ({error}); rerun the stage that writes it", err=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted: finished outputs are kept; rerun the same command to resume", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def read_params(path: Path) -> Params:
    return load_params(path)
