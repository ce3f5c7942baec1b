"""Package names imported on first use (PEP 562), so that a command loads only the modules it needs."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_names", "lazy_package"]


def lazy_names(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """The ``__getattr__`` of ``package``: a name from ``where`` (name -> submodule) is imported when first used,
    then kept in the package's namespace so that the next use costs nothing."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(importlib.import_module(package), name, value)
        return value

    return __getattr__


def lazy_package(
    package: str, where: dict[str, str]
) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """A lazy package's ``__all__`` (every name in ``where``), ``__getattr__`` and ``__dir__``."""
    names = list(where)
    return names, lazy_names(package, where), lambda: sorted(names)
