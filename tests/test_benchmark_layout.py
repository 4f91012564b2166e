"""No benchmark imports another: what they share lives in benchmarks/common.py."""

from __future__ import annotations

import ast
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def imported_benchmarks(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("benchmarks"):
            names.add(node.module if node.module != "benchmarks" else f"benchmarks.{node.names[0].name}")
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("benchmarks.")}
    return names


def test_every_benchmark_imports_only_the_shared_helper():
    offenders = {path.name: sorted(imported_benchmarks(path) - {"benchmarks.common"})
                 for path in BENCHMARKS.glob("*.py") if path.name != "common.py"}
    assert not {name: found for name, found in offenders.items() if found}
