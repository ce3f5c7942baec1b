"""``genfl-server release``, ``releases`` and ``rollback`` as an operator runs them, on a secured fleet's state: ONNX
models that onnxruntime runs, signed release frames a board's key checks, and tampering refused."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from protocol import Release, decode_message, load_signing_key, public_key_text, verify_frame

pytestmark = pytest.mark.slow  # real commands, a simulation and ONNX exports


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cloud_server", *args], capture_output=True, text=True, check=check,
                          timeout=300)  # fmt: skip


@pytest.fixture(scope="module")
def fleet_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A secured fleet's state dir holding the checkpoints of two rounds of digits."""
    from simulation import SimulationConfig, run_simulation, write_outputs

    root = tmp_path_factory.mktemp("releases")
    state = root / "state"
    _cli("broker-config", "--out", str(root / "broker"), "--host", "127.0.0.1", "--state-dir", str(state),
         "--fleet", "rel")  # fmt: skip
    (state / "checkpoints").mkdir(parents=True)
    result = run_simulation(SimulationConfig(dataset="digits", devices=4, rounds=1, seed=0, local_epochs=1))
    model = write_outputs(result, root / "run")["model"].read_bytes()
    for number in (1, 2):  # (the same model twice: what is released does not matter here)
        (state / "checkpoints" / f"round-{number:04d}.safetensors").write_bytes(model)
    return state


def _listing(state: Path) -> list[dict[str, object]]:
    return json.loads(_cli("releases", "--state-dir", str(state), "--json").stdout)["releases"]  # type: ignore[no-any-return]


def test_releases_are_signed_onnx_models_an_operator_lists_and_rolls_back(fleet_state: Path) -> None:
    state = fleet_state
    # Execute: an int8 release of round 1, a float one of the latest round, then back to the first
    first = _cli("release", "--state-dir", str(state), "--round", "1", "--note", "first")
    second = _cli("release", "--state-dir", str(state), "--float")
    listed = _listing(state)
    back = _cli("rollback", "1", "--state-dir", str(state))
    after = _listing(state)
    # Assert: numbered, the latest current until the rollback
    assert "release 1: cnn-digits int8, round 1" in first.stdout and "current" in first.stdout
    assert "release 2: cnn-digits float, round 2" in second.stdout
    assert [(r["version"], r["current"], r["int8"], r["round"]) for r in listed] == [(1, False, True, 1),
                                                                                    (2, True, False, 2)]  # fmt: skip
    assert "release 1" in back.stdout and [r["current"] for r in after] == [True, False]
    assert listed[0]["note"] == "first"
    # each frame verifies with the server's key (what a board pinned at enrollment) and names its model's bytes
    key = load_signing_key(state / "security" / "signing.key")
    for row in listed:
        payload = (state / "releases" / f"{row['version']:04d}.frame").read_bytes()
        release = decode_message(verify_frame("rel", payload, key.public_key()), Release)
        model = (state / "releases" / "models" / release.model_id).read_bytes()
        assert hashlib.sha256(model).hexdigest() == release.model_id == row["sha256"] and len(model) == row["bytes"]
        assert release.classes == tuple(str(d) for d in range(10)) and release.input_shape == (1, 8, 8)
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        scores = session.run(None, {session.get_inputs()[0].name: np.zeros((2, 1, 8, 8), np.float32)})[0]
        assert scores.shape == (2, 10) and np.isfinite(scores).all()
    int8_bytes, float_bytes = (int(r["bytes"]) for r in listed)  # type: ignore[call-overload]
    assert int8_bytes < 0.5 * float_bytes
    assert public_key_text(key)  # (the key is the fleet's: enrollment hands its public half to every board)


def test_a_tampered_release_or_model_is_refused_with_one_line(fleet_state: Path) -> None:
    state = fleet_state
    if not (state / "releases" / "0001.frame").exists():
        _cli("release", "--state-dir", str(state), "--round", "1")
    frame_path = state / "releases" / "0001.frame"
    frame = frame_path.read_bytes()
    # Execute: a frame edited after signing; then a model file swapped under its name
    frame_path.write_bytes(frame.replace(b'"round":1', b'"round":7'))
    edited = _cli("rollback", "1", "--state-dir", str(state), check=False)
    frame_path.write_bytes(frame)
    model_id = decode_message(verify_frame("rel", frame, load_signing_key(state / "security" / "signing.key")
                                           .public_key()), Release).model_id  # fmt: skip
    model_path = state / "releases" / "models" / model_id
    model = model_path.read_bytes()
    model_path.write_bytes(model[:-1] + bytes([model[-1] ^ 1]))
    swapped = _cli("rollback", "1", "--state-dir", str(state), check=False)
    model_path.write_bytes(model)
    missing = _cli("rollback", "9", "--state-dir", str(state), check=False)
    # Assert: each refused in one line, nothing made current by it
    assert edited.returncode != 0 and "not a release this server made (bad-signature" in edited.stderr
    assert swapped.returncode != 0 and "does not match its sha256" in swapped.stderr
    assert missing.returncode != 0 and "no release 9" in missing.stderr
    for result in (edited, swapped, missing):
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
