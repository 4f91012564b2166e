"""The resume point of a long benchmark: one JSON line per finished unit of work (a trained model, a sweep cell).

A benchmark that runs for hours on a small machine gets interrupted; rerun with the same work folder, it skips every
key already in the ledger. Each line is flushed and fsynced before the next unit starts, and a torn last line (a
kill -9 mid-write) is dropped on reading, so that unit is simply done again.

    ledger = Ledger(work / "runs.jsonl")
    row = ledger.get_or_run("digital_music|50%|ease", lambda: fit_and_score(...))
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from pipeline.config import Params


def with_refit(params: "Params", refit_with_validation: bool) -> "Params":
    """params.yaml's settings with `train.refit_with_validation` set as a benchmark's command line asks."""
    ranking = params.ranking.override(refit_with_validation=refit_with_validation)
    return dataclasses.replace(params, train=ranking.train)


def ledger_file(folder: Path, refit_with_validation: bool) -> Path:
    """The ledger of one final-fit protocol (`train.refit_with_validation`): rows scored from training pairs alone and
    rows scored after the final fit on training + validation pairs never resume as each other."""
    return Path(folder) / ("runs-refit.jsonl" if refit_with_validation else "runs.jsonl")


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows: dict[str, dict] = {}
        if self.path.is_file():
            lines = self.path.read_text().splitlines()
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    if number == len(lines):
                        self._drop_torn_tail()  # torn by an interruption mid-write: that unit is rerun
                        break
                    raise ValueError(f"{self.path}:{number}: not a JSON line; delete the file to start over") from None
                # lines written before the ledger was shared spelled a row as {"key": ..., **value}
                value = entry["value"] if "value" in entry else {k: v for k, v in entry.items() if k != "key"}
                self.rows[entry["key"]] = value

    def _drop_torn_tail(self) -> None:
        """Cut the last line off the file, so that the next line appended starts on a line of its own."""
        data = self.path.read_bytes().rstrip(b"\n")
        with open(self.path, "rb+") as handle:
            handle.truncate(data.rfind(b"\n") + 1)

    def get_or_run(self, key: str, work: Callable[[], dict]) -> dict:
        """The recorded result for `key`, or `work()`'s, recorded before it is returned."""
        if key not in self.rows:
            self.put(key, work())
        return self.rows[key]

    def put(self, key: str, value: dict) -> None:
        """Record `value` for `key`, replacing an earlier row (the last line for a key is the one read back)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"key": key, "value": value}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.rows[key] = value
