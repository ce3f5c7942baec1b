"""Settings declared once: a dataclass field carries its default and its help, and a command's options are made
from the fields.

A settings class declares each value with :func:`setting`; :func:`options_from` turns a function that takes
``config: ThatClass`` into a Typer command with one option per field (nested settings classes are flattened,
their fields' names must not clash); :func:`overrides_from` does the same for a command whose options override
a settings file. A new field is an option of every command built on its class, with the
same name, default and help, and there is no hand-kept copy to forget.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, field as dataclass_field, fields, is_dataclass
from enum import Enum
from typing import Any, Optional, TypeVar

from ._cli import exit_on_error

__all__ = ["options_from", "overrides_from", "setting", "settings_leaves"]

F = TypeVar("F", bound=Callable[..., Any])


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    choices: type[Enum] | None = None,
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    cli: bool = True,
) -> Any:
    """A settings field: its default and its help, and how the command line spells it.

    ``flag`` overrides the option's name (``--lr``; for a bool ``--on/--off``), ``choices`` offers an enum's
    values (the field keeps the plain value), ``parse`` reads the option's text into the field's value,
    ``cli=False`` keeps a field off the command line (one the command sets itself).
    """
    if cli and not help:
        raise TypeError("a setting on the command line needs its help")
    metadata = {"help": help, "flag": flag, "choices": choices, "parse": parse, "metavar": metavar, "cli": cli}
    return dataclass_field(default=default, metadata=metadata)


@dataclass(frozen=True)
class SettingLeaf:
    """One option: where its value goes in the settings tree and how Typer declares it."""

    path: tuple[str, ...]  # field names from the root settings class down to this value
    annotation: Any  # the option's type for Typer (Annotated with its typer.Option)
    default: Any  # the option's default, in the option's type
    to_value: Callable[[Any], Any]  # the option's value to the field's

    @property
    def name(self) -> str:
        return self.path[-1]


def settings_leaves(config_type: type) -> Iterator[tuple[tuple[str, ...], Any, Any]]:
    """(path, field, resolved type) of every leaf value of a settings tree, nested classes flattened."""
    hints = typing.get_type_hints(config_type)
    for item in fields(config_type):
        kind = hints[item.name]
        if isinstance(kind, type) and is_dataclass(kind):
            for path, leaf, leaf_kind in settings_leaves(kind):
                yield (item.name, *path), leaf, leaf_kind
        else:
            yield (item.name,), item, kind


def _optional_of(kind: Any) -> tuple[Any, bool]:
    """(inner type, whether None is allowed) of ``X | None`` or ``Optional[X]``."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        inner = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if len(inner) == 1 and len(typing.get_args(kind)) == 2:
            return inner[0], True
    return kind, False


def _leaf(path: tuple[str, ...], item: Any, kind: Any, *, override: bool) -> SettingLeaf:
    """The option of one field; ``override``: it defaults to None (not given), and the help names the default."""
    import typer

    meta = item.metadata
    inner, nullable = _optional_of(kind)
    default = item.default_factory() if item.default_factory is not MISSING else item.default
    to_value: Callable[[Any], Any] = lambda value: value  # noqa: E731
    if meta["choices"] is not None:
        inner = meta["choices"]
        default = None if default in (None, MISSING) else inner(default)
        to_value = lambda value: None if value is None else value.value  # noqa: E731
    elif meta["parse"] is not None:
        parse = meta["parse"]
        inner = str
        default = ",".join(default) if isinstance(default, tuple) else default
        to_value = lambda value: None if value is None else parse(value)  # noqa: E731
    elif typing.get_origin(inner) is not None:
        raise TypeError(f"setting {'.'.join(path)}: a {inner} on the command line needs parse=")
    flag = meta["flag"] or "--" + path[-1].replace("_", "-")
    if inner is bool and "/" not in flag:
        flag = f"{flag}/--no-{flag[2:]}"
    help_text = meta["help"]
    if override:
        shown = getattr(default, "value", default)
        if inner is bool and shown is not MISSING:
            shown = flag[2:].split("/--")[0 if shown else 1]  # the flag in force: require-qat or allow-float
        if shown not in (None, MISSING, ""):
            help_text += f" (default: {shown})"
        default, nullable = None, True
    option = typer.Option(flag, help=help_text, metavar=meta["metavar"], show_default=default is not None)
    annotation = typing.Annotated[Optional[inner] if nullable else inner, option]  # type: ignore[valid-type]
    return SettingLeaf(path, annotation, inspect.Parameter.empty if default is MISSING else default, to_value)


def _build(config_type: type, values: dict[tuple[str, ...], Any], prefix: tuple[str, ...] = ()) -> Any:
    hints = typing.get_type_hints(config_type)
    kwargs: dict[str, Any] = {}
    for item in fields(config_type):
        path, kind = (*prefix, item.name), hints[item.name]
        if isinstance(kind, type) and is_dataclass(kind):
            kwargs[item.name] = _build(kind, values, path)
        elif path in values:
            kwargs[item.name] = values[path]
    return config_type(**kwargs)


def _command(
    func: Callable[..., Any], config_type: type, take: Callable[[dict[tuple[str, ...], Any]], Any], *, override: bool
) -> Any:
    """``func`` as a Typer command with one option per setting; ``take`` turns their values into its first
    argument."""
    missing = [".".join(path) for path, item, _ in settings_leaves(config_type) if not item.metadata]
    if missing:
        raise TypeError(f"{config_type.__name__}: declare these with setting(): {', '.join(missing)}")
    leaves = [
        _leaf(path, item, kind, override=override)
        for path, item, kind in settings_leaves(config_type)
        if item.metadata["cli"]
    ]
    hints = typing.get_type_hints(func, include_extras=True)  # the command's own options, resolved
    own = list(inspect.signature(func).parameters.values())[1:]
    own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in own]
    names = [p.name for p in own] + [leaf.name for leaf in leaves]
    clashes = sorted({name for name in names if names.count(name) > 1})
    if clashes:
        raise TypeError(f"{func.__name__}: options declared twice: {', '.join(clashes)}")

    @functools.wraps(func)
    def command(**kwargs: Any) -> Any:
        with exit_on_error():  # an option's text that does not parse is one line too
            values = {leaf.path: leaf.to_value(kwargs.pop(leaf.name)) for leaf in leaves}
            first = take(values)
        return func(first, **kwargs)

    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = own + [inspect.Parameter(leaf.name, keyword, default=leaf.default, annotation=leaf.annotation)
                        for leaf in leaves]  # fmt: skip
    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    return command


def options_from(config_type: type) -> Callable[[F], F]:
    """Make ``func(config, **own_options)`` a Typer command whose options are ``config_type``'s settings.

    The command's own parameters stay as declared; a bad combination of settings (the class's checks) ends the
    command with the error's one line, as every command does.
    """
    return lambda func: _command(func, config_type, lambda values: _build(config_type, values), override=False)


def overrides_from(config_type: type) -> Callable[[F], F]:
    """Make ``func(overrides, **own_options)`` a Typer command with an option per setting of ``config_type`` that
    overrides a settings file: ``overrides`` maps each given option's field name to its value (the command reads
    the file and lays them on top)."""

    def given(values: dict[tuple[str, ...], Any]) -> dict[str, Any]:
        return {path[-1]: value for path, value in values.items() if value is not None}

    return lambda func: _command(func, config_type, given, override=True)
