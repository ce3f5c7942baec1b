"""Model releases to real boards: `genfl-server serve` and three `genfl-edge run` agents over Mosquitto train; the
operator releases a round's model, every board scores it on its own held-out data and deploys it; a worse release
is refused by the board that asks for no loss, with the scores; a rollback brings every board back."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import onnx

from tests.system._helpers import ENV, processes, wait_for
from tests.system._secured import SecuredFleet


def _status(folder: Path) -> dict[str, object]:
    try:
        return json.loads((folder / "status.json").read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {}


def _release(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "cloud_server", *args], capture_output=True, text=True, env=ENV,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_boards_deploy_a_release_refuse_a_worse_one_with_the_scores_and_follow_a_rollback(
    tmp_path: Path, mosquitto_url: str, fleet: str
) -> None:
    # Prepare: three boards with image folders as an operator's boards hold them (a train/ folder only, so each
    # scores releases on a fixed slice of its own images), a third of the digits each
    from PIL import Image

    from edge_agent import load_dataset

    digits = load_dataset("digits").train
    state = tmp_path / "server"
    boards = {"board-a": "1.0", "board-b": "1.0", "board-c": "0.0"}  # board-c takes no release that scores lower
    for number, name in enumerate(boards):
        for index in range(number, len(digits), 3):
            path = tmp_path / f"data-{name}" / "train" / str(digits.labels[index]) / f"{index}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(digits.images[index][0]).save(path)
    with processes(tmp_path) as group:
        # (rounds enough to outlast the test: serve hands out releases while it runs)
        group.server("server", state, fleet, "--broker", mosquitto_url, "--rounds", "10000", "--min-devices", "3")
        classes = ",".join(str(d) for d in range(10))
        for name, margin in boards.items():
            group.agent(name, name, fleet, mosquitto_url, f"folder:{tmp_path / f'data-{name}'}", "--release-margin",
                        margin, "--status-interval", "0.5", "--classes", classes)  # fmt: skip
        wait_for((state / "checkpoints" / "round-0003.safetensors").exists, 240, "round 3's checkpoint")

        def runs(version: int) -> bool:
            return all(_status(tmp_path / name).get("release") == version for name in boards)

        # Execute: round 3's model, int8
        first = _release("release", "--state-dir", str(state), "--round", "3")
        wait_for(lambda: runs(1), 120, f"every board to deploy release 1 ({group.log('server')[-1500:]})")
        # Execute: round 1's model (it scores lower than round 3's on every board's held-out digits)
        _release("release", "--state-dir", str(state), "--round", "1", "--note", "older")

        def answered_second() -> bool:
            outcome = _status(tmp_path / "board-c").get("release_outcome")
            others = [_status(tmp_path / name).get("release") for name in ("board-a", "board-b")]
            return isinstance(outcome, list) and outcome[0] == 2 and others == [2, 2]

        wait_for(answered_second, 120, "release 2 to be taken, and refused by board-c")
        refused = _status(tmp_path / "board-c")
        taken = [_status(tmp_path / name).get("release") for name in ("board-a", "board-b")]
        # Execute: back to release 1
        _release("rollback", "1", "--state-dir", str(state))
        wait_for(lambda: runs(1), 120, "every board to run release 1 again")
        logs = {name: group.log(name) for name in boards}
    # Assert: release 1 everywhere, a whole model onnx loads; board-c said why it kept release 1
    assert "release 1: cnn-digits int8, round 3" in first
    assert taken == [2, 2]
    assert refused["release"] == 1
    outcome = refused["release_outcome"]
    assert isinstance(outcome, list) and outcome[0] == 2 and "refused: it scores" in outcome[1], outcome
    assert "the deployed release 1" in outcome[1] and "margin 0" in outcome[1]
    assert "not deploying release 2" in logs["board-c"] and "deployed release 1" in logs["board-a"]
    for name in boards:
        model = tmp_path / name / "model" / "current.onnx"
        onnx.load(str(model))
        assert (tmp_path / name / "model" / "version").read_text().strip() == "1"
    # the board's own use of it: `genfl-edge predict` takes the deployed release by default
    Image.fromarray(load_dataset("digits").test.images[0][0]).save(tmp_path / "seven.png")
    predicted = subprocess.run([sys.executable, "-m", "edge_agent", "predict", str(tmp_path / "seven.png"),
                                "--state-dir", str(tmp_path / "board-a")], capture_output=True, text=True, env=ENV,
                               timeout=120)  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert predicted.stdout.startswith(str(tmp_path / "seven.png")) and len(predicted.stdout.split("\t")) == 3


def test_on_a_signed_fleet_a_forged_or_edited_release_frame_is_refused_and_the_board_keeps_its_model(
    secured: SecuredFleet,
) -> None:
    from edge_agent._daemon import load_agent_config
    from protocol import (
        Release,
        decode_message,
        encode_message,
        generate_signing_key,
        load_signing_key,
        sign_frame,
        verify_frame,
    )

    # Prepare: a signed fleet, one enrolled board running release 1
    secured.serve("--rounds", "40", "--min-devices", "1")
    home = secured.enroll("board-s")
    folder = load_agent_config(home / "edge.toml", {}).state_dir
    secured.group.start("board-s", "-m", "edge_agent", "run", "--home", str(home), "--status-interval", "0.5")
    wait_for((secured.state / "checkpoints" / "round-0002.safetensors").exists, 240, "round 2's checkpoint")
    secured.cli("server", "release", "--state-dir", str(secured.state), "--round", "2")
    wait_for(lambda: _status(folder).get("release") == 1, 120, "the board to deploy release 1")
    shown = json.loads(secured.cli("edge", "status", "--home", str(home), "--json").stdout)
    assert shown["release"] == 1 and str(shown["release_outcome"]).startswith("release 1: deployed (scores 0.")
    model = (folder / "model" / "current.onnx").read_bytes()
    # Execute: with the server's rights on the broker, an intruder sends the board a release signed with its own
    # key, and the real release 1 frame edited to name another model
    genuine = (secured.state / "releases" / "0001.frame").read_bytes()
    key = load_signing_key(secured.state / "security" / "signing.key")
    release = decode_message(verify_frame(secured.fleet, genuine, key.public_key()), Release)
    other = encode_message(replace(release, version=7, model_id="ab" * 32))
    signature = genuine[: len(genuine) - len(encode_message(release))]  # release 1's signature, on other bytes
    observer = secured.observer()
    topic = f"genfl/{secured.fleet}/devices/board-s/task"
    observer.publish(topic, sign_frame(secured.fleet, other, generate_signing_key()))
    observer.publish(topic, signature + other)
    observer.flush()
    wait_for(lambda: (_status(folder).get("rejected") or {}).get("bad-signature", 0) >= 2, 60,  # type: ignore[union-attr]
             "the board to refuse both frames")  # fmt: skip
    observer.close()
    # Assert: still release 1, the same bytes
    assert _status(folder).get("release") == 1
    assert (folder / "model" / "current.onnx").read_bytes() == model


def test_serve_releases_every_n_rounds_on_its_own(tmp_path: Path, mosquitto_url: str, fleet: str) -> None:
    state = tmp_path / "server"
    with processes(tmp_path) as group:
        server = group.server("server", state, fleet, "--broker", mosquitto_url, "--rounds", "4", "--min-devices",
                              "1", "--release-every", "2")  # fmt: skip
        group.agent("board", "board", fleet, mosquitto_url, "digits", "--status-interval", "0.5")
        wait_for(lambda: server.poll() is not None, 240, f"serve to finish ({group.log('server')[-1500:]})")
        deployed = _status(tmp_path / "board").get("release")
    listed = json.loads(_release("releases", "--state-dir", str(state), "--json"))["releases"]
    assert [(r["version"], r["round"], r["int8"], r["note"]) for r in listed] == [(1, 2, True, "automatic"),
                                                                                 (2, 4, True, "automatic")]  # fmt: skip
    assert server.returncode == 0 and deployed in (1, 2)  # release 2 came as serve was leaving
