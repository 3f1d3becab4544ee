"""The layout's arrows point one way: schemas <- processors <- pipeline -> sinks. The pure core
(processors/) touches no I/O library, the sinks receive plain rows and their own settings,
and the message models (schemas/) depend on nothing of ours. Read from the code's imports,
including those inside functions."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IO = {"aiokafka", "kafka", "clickhouse_driver", "faust", "mode", "aiohttp"}
FORBIDDEN = {
    "schemas": {"pipeline", "processors", "sinks"} | IO,
    "processors": {"pipeline", "sinks"} | IO,
    "sinks": {"pipeline", "processors"},
}


def imported(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_point_one_way(package: str) -> None:
    wrong = {
        str(path.relative_to(ROOT)): sorted(imported(path) & FORBIDDEN[package])
        for path in sorted((ROOT / package).rglob("*.py"))
        if imported(path) & FORBIDDEN[package]
    }
    assert not wrong, f"{package}/ must not import {sorted(FORBIDDEN[package])}: {wrong}"


def test_the_walk_sees_imports() -> None:
    """The check can fail: it finds the imports pipeline/ makes of the layers below it."""
    found = set().union(*(imported(p) for p in (ROOT / "pipeline").rglob("*.py")))
    assert {"processors", "sinks", "schemas", "aiokafka", "faust"} <= found
