"""File I/O shared by every stage: atomic writes, Parquet helpers and content fingerprints.

Every output is written to a temporary name beside its destination and renamed into place, so an interrupted run
never leaves a half-written file that a later stage could mistake for a finished one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq


class DataError(ValueError):
    """Input data is missing, malformed or inconsistent; the message names the file, line or field."""


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def default_work_dir(out: Path) -> Path:
    """Where a long step keeps what it resumes from (checkpoints, epoch states) while it writes `out`: beside it,
    so that a rerun of the same command finds it, and removed once `out` is whole."""
    return out.with_name(f"{out.name}.work")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def sweep_stale(path: Path) -> None:
    """Remove what a killed writer of `path` left beside it (`.NAME.tmp-PID`, `.NAME.old-PID` of a process that no
    longer runs): hidden, so never taken for a finished output, but a whole embedding cache can sit in one."""
    for left in path.parent.glob(f".{path.name}.*-*") if path.parent.is_dir() else ():
        kind, _, pid = left.name[len(path.name) + 2:].partition("-")
        if kind in ("tmp", "old") and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            _remove(left)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def refuse_file_as_folder(path: str | Path, setting: str = "the output folder") -> None:
    """Raise `DataError` when `path`, where a folder is to be written, is an existing file.

    Parameters
    ----------
    path
        Where an output folder will go.
    setting
        How the user named it (``--out``, a params key), quoted in the message.

    Raises
    ------
    DataError
        `path` is a file (or a link to one): every output this project writes there is a folder, so the file is not
        one of ours, and replacing it would lose it.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{setting} {path}: is an existing file, not a folder; outputs are folders and this one would "
                        "replace the file. Move the file away or choose another path. Nothing was written.")


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it replaces the folder `path` as a whole (never a file: see
    `refuse_file_as_folder`)."""
    path = Path(path)
    refuse_file_as_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    tmp = _tmp_name(path)
    _remove(tmp)
    tmp.mkdir()
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    except BaseException:
        _remove(tmp)
        raise


def write_json(path: str | Path, data: Any) -> None:
    """Write `data` to `path` as indented JSON (values JSON cannot hold written as `str`), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    """The JSON value in `path`; a missing file or invalid JSON raises `DataError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None


def write_table(path: str | Path, table: pa.Table, schema: pa.Schema | None = None,
                row_group_size: int = 65536) -> None:
    """Write `table` as Parquet atomically, cast to `schema` (whose metadata is kept) when given."""
    if schema is not None:
        table = conform(table, schema, str(path))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size, compression="zstd")


def conform(table: pa.Table, schema: pa.Schema, where: str) -> pa.Table:
    """Select and cast the columns of `schema`, naming any missing column."""
    missing = [name for name in schema.names if name not in table.column_names]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}")
    table = table.select(schema.names)
    return table.cast(schema)


def read_table(path: str | Path, schema: pa.Schema | None = None, columns: list[str] | None = None) -> pa.Table:
    """Read Parquet, checking that the columns of `schema` are present with compatible types."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (has the stage that writes it run?)")
    try:
        table = pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet file ({error}); rerun the stage that writes it") from None
    if schema is not None:
        expected = schema if columns is None else pa.schema([schema.field(c) for c in columns])
        table = conform(table, expected, str(path)).replace_schema_metadata(table.schema.metadata)
    return table


def fingerprint_files(paths: list[str | Path], chunk: int = 1 << 20) -> str:
    """SHA-256 over the names and bytes of `paths` (folders are walked in sorted order); short hex digest."""
    digest = hashlib.sha256()
    for root in paths:
        root = Path(root)
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for file in files:
            if file.name.startswith("."):
                continue
            digest.update(str(file.relative_to(root) if root.is_dir() else file.name).encode())
            with open(file, "rb") as handle:
                while block := handle.read(chunk):
                    digest.update(block)
    return digest.hexdigest()[:16]
