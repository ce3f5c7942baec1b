"""The fleet's class list: one numbering of the classes for every board, pool and exported model.

A board's data names its classes (folder names, a data set's own list); the
fleet's list says which number each name is. The server owns the list, sends
it with every task (and in the enrollment reply), and a board maps its names
onto it by name: a board may lack classes, but it never numbers them its own way.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

from ._errors import ConfigError, DataError

__all__ = ["MAX_CLASSES", "class_mapping", "default_classes", "describe_classes", "parse_classes", "validate_classes"]

MAX_CLASSES = 10_000
MAX_CLASSES_BYTES = 32 * 1024  # the list as JSON: it rides in every task's header (at most 64 KiB in all)


def validate_classes(names: Sequence[str], expected: int | None = None) -> tuple[str, ...]:
    """A class list: distinct names of 1-64 printable characters without '/' or ',' and not starting with '.';
    ``expected`` of them when given (the classes a model predicts)."""
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ConfigError(f"a class list must be a list of names, got {type(names).__name__}")
    if not 0 < len(names) <= MAX_CLASSES:
        raise ConfigError(f"a class list holds 1..{MAX_CLASSES} names, got {len(names)}")
    for name in names:
        if (
            not isinstance(name, str)
            or not 0 < len(name) <= 64
            or not name.isprintable()
            or "/" in name
            or "," in name
            or name.startswith(".")
            or name != name.strip()
        ):
            raise ConfigError(
                f"invalid class name {str(name)[:80]!r}: use 1-64 printable characters, no '/' or ',', no "
                "leading '.' or surrounding spaces"
            )
    if len(set(names)) != len(names):
        repeated = sorted(name for name, count in Counter(names).items() if count > 1)
        raise ConfigError(f"class names must be distinct; repeated: {repeated[:5]}")
    if len(json.dumps(list(names), ensure_ascii=False).encode()) > MAX_CLASSES_BYTES:
        raise ConfigError(f"the class list takes more than {MAX_CLASSES_BYTES} bytes; every task must carry it")
    if expected is not None and len(names) != expected:
        raise ConfigError(f"{len(names)} class names, but the model predicts {expected} classes")
    return tuple(names)


def default_classes(count: int) -> tuple[str, ...]:
    """The list of a fleet that names none: the numbers ``0`` .. ``count - 1`` (the bundled digits' names)."""
    return tuple(str(i) for i in range(count))


def describe_classes(names: Sequence[str], limit: int = 12) -> str:
    """``a, b, c`` (the first ``limit``, then how many more): for one-line messages."""
    shown = ", ".join(names[:limit])
    return shown if len(names) <= limit else f"{shown}, ... ({len(names)} in all)"


def class_mapping(local: Sequence[str], fleet: Sequence[str], origin: str) -> tuple[int, ...]:
    """For each of ``local``'s class names, its number in the ``fleet`` list; a name the fleet does not know
    is a one-line DataError naming ``origin``."""
    index = {name: i for i, name in enumerate(fleet)}
    unknown = [name for name in local if name not in index]
    if unknown:
        raise DataError(
            f"{origin} holds class {unknown[0]!r}, which is not one of the fleet's {len(fleet)} classes "
            f"({describe_classes(fleet)}); rename the folder, or set the fleet's classes with serve --classes"
        )
    return tuple(index[name] for name in local)


def parse_classes(text: str | Sequence[str], expected: int | None = None) -> tuple[str, ...]:
    """``a,b,c`` (a command-line option) or a list (a config file) as a checked class list."""
    names = [part.strip() for part in text.split(",")] if isinstance(text, str) else list(text)
    return validate_classes(names, expected)
