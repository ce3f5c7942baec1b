"""The systemd units: in sync with the renderers, valid, and well sandboxed (systemd-analyze)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

from tools.render_units import UNITS  # noqa: E402


@pytest.mark.parametrize("name", sorted(UNITS))
def test_committed_units_match_the_renderers(name: str) -> None:
    assert (ROOT / "systemd" / name).read_text() == UNITS[name](), "run: python tools/render_units.py"


@pytest.mark.parametrize(("script", "unit", "limit"), [("genfl-edge", "genfl-edge.service", 2.0),
                                                      ("genfl-server", "genfl-server.service", 3.5)])  # fmt: skip
def test_installed_unit_verifies_and_scores_within_the_limit(
    tmp_path: Path, script: str, unit: str, limit: float
) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze is part of this machine kind"
    # Execute: install under a root, as a user would on a board
    done = subprocess.run([BIN / script, "install-service", "--root", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    path = tmp_path / "etc/systemd/system" / unit
    assert f"ExecStart={BIN / script} " in path.read_text()
    assert "systemctl enable --now" in done.stdout
    verify = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True)
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(path)], capture_output=True, text=True
    )
    # Assert
    assert verify.returncode == 0, verify.stderr
    score = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout).group(1))  # type: ignore[union-attr]
    assert score <= limit
    removed = subprocess.run([BIN / script, "uninstall-service", "--root", str(tmp_path)], capture_output=True)
    assert removed.returncode == 0 and not path.exists()


def test_edge_unit_takes_data_and_user(tmp_path: Path) -> None:
    done = subprocess.run(
        [BIN / "genfl-edge", "install-service", "--root", str(tmp_path), "--data", "folder:/srv/genfl/data",
         "--user", "genfl"], capture_output=True, text=True,
    )  # fmt: skip
    text = (tmp_path / "etc/systemd/system/genfl-edge.service").read_text()
    assert done.returncode == 0
    assert "--data folder:/srv/genfl/data" in text and "ReadOnlyPaths=/srv/genfl/data" in text
    assert "User=genfl" in text and "DynamicUser" not in text
    bad = subprocess.run([BIN / "genfl-edge", "install-service", "--root", str(tmp_path), "--data", "folder:rel"],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "absolute path" in bad.stderr
