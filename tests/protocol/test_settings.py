"""Commands made from settings classes: each field an option with its default, help and checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from protocol import ConfigError, new_app, options_from, setting


class Colour(str, Enum):
    RED = "red"
    BLUE = "blue"


def _tags(text: str) -> tuple[str, ...]:
    if text == "bad":
        raise ConfigError("tags must not say bad")
    return tuple(text.split(","))


@dataclass(frozen=True)
class Inner:
    depth: int = setting(3, "How deep.")
    colour: str = setting("red", "Which colour.", choices=Colour)


@dataclass(frozen=True, kw_only=True)
class Outer:
    name: str = setting(help="Required name.")
    rate: float = setting(0.1, "A rate.", flag="--lr")
    loud: bool = setting(False, "Shout.")
    quiet_mode: bool = setting(True, "Whisper.", flag="--whisper/--speak")
    tags: tuple[str, ...] | None = setting(None, "Comma-separated tags.", parse=lambda text: _tags(text))
    limit: int | None = setting(None, "A limit.")
    hidden: str = setting("kept", cli=False)
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self) -> None:
        if self.rate <= 0:
            raise ConfigError(f"rate must be positive, got {self.rate}")


def _app() -> tuple[typer.Typer, list[Outer]]:
    seen: list[Outer] = []

    @options_from(Outer)
    def run(config: Outer, verbose: Annotated[bool, typer.Option(help="Own option.")] = False) -> None:
        seen.append(config)
        typer.echo(f"verbose={verbose}")

    app = new_app("toy", "a toy", "0")
    app.command("run")(run)
    app.command("other")(lambda: None)
    return app, seen


def test_defaults_and_values_reach_the_settings_tree() -> None:
    app, seen = _app()
    result = CliRunner().invoke(app, ["run", "--name", "n"])
    assert result.exit_code == 0, result.output
    assert seen[-1] == Outer(name="n")
    argv = ["run", "--name", "n", "--lr", "0.5", "--loud", "--speak", "--tags", "a,b", "--limit", "4",
            "--depth", "7", "--colour", "blue", "--verbose"]  # fmt: skip
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert "verbose=True" in result.output
    assert seen[-1] == Outer(
        name="n", rate=0.5, loud=True, quiet_mode=False, tags=("a", "b"), limit=4, inner=Inner(7, "blue")
    )


def test_bad_values_end_in_one_line() -> None:
    app, seen = _app()
    result = CliRunner().invoke(app, ["run", "--name", "n", "--lr", "-1"])
    assert result.exit_code != 0 and "rate must be positive, got -1.0" in result.output
    assert "Traceback" not in result.output
    assert CliRunner().invoke(app, ["run"]).exit_code == 2  # --name is required
    assert CliRunner().invoke(app, ["run", "--name", "n", "--colour", "green"]).exit_code == 2
    assert CliRunner().invoke(app, ["run", "--name", "n", "--hidden", "x"]).exit_code == 2
    unparsable = CliRunner().invoke(app, ["run", "--name", "n", "--tags", "bad"])
    assert unparsable.exit_code == 2 and "error: tags must not say bad" in unparsable.output
    assert seen == []


def test_help_is_the_fields_help() -> None:
    app, _ = _app()
    text = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
    for words in ("Required name.", "A rate.", "--whisper", "Which colour.", "Own option."):
        assert words in text


def test_declaring_an_option_twice_or_without_help_is_refused() -> None:
    with pytest.raises(TypeError, match="declared twice: depth"):

        @options_from(Outer)
        def twice(config: Outer, depth: int = 1) -> None: ...

    @dataclass(frozen=True)
    class Bare:
        plain: int = 1

    with pytest.raises(TypeError, match="declare these with setting\\(\\): plain"):

        @options_from(Bare)
        def bare(config: Bare) -> None: ...

    with pytest.raises(TypeError, match="needs its help"):
        setting(1)


def test_overrides_hold_only_the_options_given() -> None:
    from protocol import overrides_from

    seen: list[dict[str, object]] = []

    @overrides_from(Outer)
    def run(overrides: dict[str, object]) -> None:
        seen.append(overrides)

    app = new_app("toy", "a toy", "0")
    app.command("run")(run)
    app.command("other")(lambda: None)
    assert CliRunner().invoke(app, ["run"]).exit_code == 0  # nothing required: a settings file may hold it
    assert seen[-1] == {}
    assert CliRunner().invoke(app, ["run", "--speak", "--tags", "x", "--depth", "2"]).exit_code == 0
    assert seen[-1] == {"quiet_mode": False, "tags": ("x",), "depth": 2}
    text = CliRunner().invoke(app, ["run", "--help"], env={"COLUMNS": "200"}).output
    assert "A rate. (default: 0.1)" in text and "Whisper. (default: whisper)" in text
