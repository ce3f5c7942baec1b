"""The packages' layering, read from their imports: each production package imports only those below it, and none
imports the simulation, the testing helpers or the tests."""

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
    "testing": {"protocol", "models", "edge_agent", "cloud_server"},
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


def _imports_within(path: Path, package: str) -> set[str]:
    """The modules of ``package`` that ``path`` imports (at its top or in a function; not for type checking)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    base = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    found = set()
    tree = ast.parse(path.read_text(), str(path))
    typing_only = {id(n) for node in tree.body if isinstance(node, ast.If) for n in ast.walk(node)}
    for node in ast.walk(tree):  # in functions too: a lazy import closes a circle as much as any
        if id(node) in typing_only:  # `if TYPE_CHECKING:` imports nothing at run time
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                target = f"{parent}.{node.module}" if node.module else parent
                names = [f"{target}.{alias.name}" for alias in node.names]
                found |= {target, *names}
            elif node.module and node.module.split(".")[0] == package:
                found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == package}
    return found


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_no_module_imports_itself_round_a_circle(package: str) -> None:
    modules = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in (ROOT / package).rglob("*.py")
    }
    # (a module's own packages are initialised before it: importing from them closes no circle)
    graph = {
        name: {t for t in _imports_within(path, package) & set(modules) if not (name + ".").startswith(t + ".")}
        for name, path in modules.items()
    }
    circles = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                circles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == []


@pytest.mark.parametrize("package", ["protocol", "models", "edge_agent", "cloud_server"])
def test_no_production_function_is_longer_than_sixty_lines(package: str) -> None:
    long = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


@pytest.mark.parametrize("package", ["protocol", "edge_agent", "cloud_server", "simulation"])
def test_every_name_a_lazy_package_offers_imports(package: str) -> None:
    """A lazy package's names are its stub's imports: a name the stub offers that its submodule lacks would pass
    the type checker and fail at first use."""
    import importlib

    module = importlib.import_module(package)
    assert module.__all__, f"{package} offers nothing"
    missing = []
    for name in module.__all__:
        try:
            getattr(module, name)
        except (AttributeError, ImportError):
            missing.append(name)
    assert missing == []
