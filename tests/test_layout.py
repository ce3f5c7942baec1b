"""The packages' layering, read from their imports: each production package imports only those below it, and none
imports the simulation or the tests."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# each package, and what it may import of this project (besides itself)
LAYERS = {
    "protocol": set(),
    "models": {"protocol"},
    "edge_agent": {"protocol", "models"},
    "cloud_server": {"protocol", "models", "edge_agent"},
    "simulation": {"protocol", "models", "edge_agent", "cloud_server"},
}
PROJECT = {*LAYERS, "tests", "tools"}


def _imported(path: Path) -> set[str]:
    """The project's top-level packages ``path`` imports (absolute imports; relative ones stay inside)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & PROJECT


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    wrong = {
        str(path.relative_to(ROOT)): sorted(_imported(path) - LAYERS[package] - {package})
        for path in sorted((ROOT / package).rglob("*.py"))
    }
    assert {file: names for file, names in wrong.items() if names} == {}
