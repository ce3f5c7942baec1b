"""Turn the project's errors into a one-line reason and an exit code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from protocol import GenflError


@contextmanager
def exit_on_error() -> Iterator[None]:
    try:
        yield
    except GenflError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=exc.exit_code) from exc
