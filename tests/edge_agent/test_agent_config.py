"""The board's settings file: what it may hold, and the one-line error for what it may not."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent._daemon import load_agent_config
from edge_agent._enroll import find_config
from protocol import ConfigError

ENROLLED = '[agent]\ndevice_id = "cam-01"\ndata = "digits"\nstate_dir = "state"\n'


def test_a_misspelt_section_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(ENROLLED + "\n[agnet]\nmin_batch_size = 32\nrequire_qat = true\n")
    with pytest.raises(ConfigError, match=r"unknown sections or keys \['agnet'\]"):
        load_agent_config(path, {})


def test_a_table_among_top_level_settings_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text('device_id = "cam-01"\ndata = "digits"\nstate_dir = "s"\n[policy]\nmin_batch_size = 32\n')
    with pytest.raises(ConfigError, match=r"\['policy'\]"):
        load_agent_config(path, {})


def test_the_enrolled_layout_and_the_top_level_layout_both_load(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(ENROLLED + "min_batch_size = 32\n")
    assert load_agent_config(path, {}).min_batch_size == 32
    path.write_text('device_id = "cam-01"\ndata = "digits"\nstate_dir = "s"\nmin_batch_size = 16\n')
    assert load_agent_config(path, {}).min_batch_size == 16


@contextlib.contextmanager
def _as_another_user() -> Iterator[None]:
    """Run the body as uid 65534 (nobody) when the tests run as root; otherwise as this non-root user."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_a_config_enrolled_by_root_is_named_with_what_reading_it_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o700)
    system = etc / "edge.toml"
    system.write_text(ENROLLED)
    system.chmod(0o600)
    if os.geteuid() != 0:
        etc.chmod(0o000)  # as closed to this user as root's /etc/genfl is to anyone else
    monkeypatch.delenv("GENFL_EDGE_HOME", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    try:
        monkeypatch.setenv("HOME", "/nonexistent/genfl-test-home")  # no config of its own
        with _as_another_user(), pytest.raises(ConfigError, match=r"enrolled as root .*only root"):
            find_config(system=system)
        monkeypatch.setenv("HOME", str(etc))  # HOME=/root as another uid: a folder this user may not enter
        with _as_another_user(), pytest.raises(ConfigError, match=r"may not read it; .*broker password"):
            find_config(system=system)
    finally:
        etc.chmod(0o700)
    if os.geteuid() == 0:  # root reads the system config when it has none of its own
        monkeypatch.setenv("HOME", str(tmp_path / "root-home"))
        assert find_config(system=system) == system


def test_no_config_anywhere_says_enroll_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENFL_EDGE_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="enroll first"):
        find_config(system=tmp_path / "absent.toml")
