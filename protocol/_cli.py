"""What both command-line programs share: one Typer app set-up and one way to end on an error.

Commands parse their options and call library functions; a :class:`GenflError`
becomes one red line on stderr and the error's exit code, never a traceback.
Typer is imported when a CLI needs it, so the agent daemon does not carry it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ._errors import GenflError

if TYPE_CHECKING:
    import typer

__all__ = ["exit_on_error", "new_app", "uninstall_command"]


@contextmanager
def exit_on_error() -> Iterator[None]:
    try:
        yield
    except GenflError as exc:
        import typer

        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=exc.exit_code) from exc


def new_app(name: str, help_text: str, version: str) -> typer.Typer:
    """A Typer app with ``--version`` and the project's conventions (no completion, plain tracebacks)."""
    import typer

    app = typer.Typer(
        name=name, help=help_text, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False
    )

    def _version(value: bool) -> None:
        if value:
            typer.echo(f"{name} {version}")
            raise typer.Exit()

    def _root(
        version_flag: bool = typer.Option(
            False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ) -> None:
        del version_flag

    _root.__doc__ = help_text
    app.callback()(_root)
    return app


def uninstall_command(unit_name: str, state_dir: str, also: tuple[str, ...] = ()) -> Callable[..., None]:
    """The ``uninstall-service`` command of a program whose unit is ``unit_name`` (and the units ``also``, when
    they are there)."""
    from pathlib import Path
    from typing import Annotated

    import typer

    from ._systemd import uninstall_unit

    def uninstall_service(root: Path = Path("/"), now: bool = False) -> None:
        with exit_on_error():
            done = uninstall_unit(root, unit_name, now=now)
            extra = [uninstall_unit(root, name, now=now) for name in also]
        for line in done.report("removed", ran=now):
            typer.echo(line)
        for removed in extra:  # only what was there
            if removed.done:
                for line in removed.report("removed", ran=now):
                    typer.echo(line)

    # Set as objects: this module's annotations are strings, which Typer would resolve in the wrong namespace.
    uninstall_service.__annotations__ = {
        "root": Annotated[Path, typer.Option(help="Remove from under this root.")],
        "now": Annotated[bool, typer.Option(help="Also stop and disable it first (needs systemd as PID 1).")],
        "return": None,
    }
    uninstall_service.__doc__ = f"Remove {unit_name} (state in {state_dir} is kept)."
    return uninstall_service
