"""The board's deployed model: staged releases, the atomic swap, rollback, and SIGKILL at any instant."""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_agent._deployment import ModelDeployment
from protocol import ModelError


def _model(scale: float, size: int = 600_000) -> bytes:
    """A small ONNX model y = x * w with ``size`` weights: whole, it answers ``scale``; cut, it does not load."""
    weights = numpy_helper.from_array(np.full(size, scale, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "m",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size])], [weights])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def _answer(path: Path) -> float:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return float(session.run(None, {"x": np.ones(600_000, np.float32)})[0][0])


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_deploy_keeps_the_previous_model_and_rollback_swaps_them_back(tmp_path: Path) -> None:
    one, two = _model(1.0), _model(2.0)
    deployment = ModelDeployment(tmp_path)
    assert deployment.deployed() is None
    deployment.stage(one, 1, _sha(one))
    assert deployment.deploy(_sha(one)).version == 1 and _answer(deployment.current) == 1.0
    deployment.stage(two, 2, _sha(two))
    assert deployment.deploy(_sha(two)).version == 2 and _answer(deployment.current) == 2.0
    assert deployment.previous_release().version == 1  # type: ignore[union-attr]
    assert (tmp_path / "model" / "version").read_text() == "2\n"
    back = deployment.rollback()
    assert back.version == 1 and _answer(deployment.current) == 1.0
    assert deployment.previous_release().version == 2  # type: ignore[union-attr]
    with pytest.raises(ModelError, match="do not match its sha256"):
        deployment.stage(two[:-1] + b"x", 3, _sha(two))  # a tampered model is not staged
    with pytest.raises(ModelError, match="not staged"):
        deployment.deploy("0" * 64)


_CHILD = """
import os, signal, sys
from pathlib import Path
from edge_agent._deployment import ModelDeployment
state, sha, data = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]).read_bytes()
kill_at, when = int(sys.argv[5]), sys.argv[6]  # the file-system step to die at (0: none), before or after it
steps = 0
def counted(call):
    def step(*args, **kwargs):
        global steps
        steps += 1
        if steps == kill_at and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = call(*args, **kwargs)
        if steps == kill_at and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return step
for name in ("fsync", "replace", "link", "unlink", "write"):
    setattr(os, name, counted(getattr(os, name)))
# as the agent takes a release: its model downloaded in chunks into a blob store, then staged and swapped in
import time
from edge_agent._release_taker import ReleaseTaker
from protocol import BlobStore, Release, iter_chunks
release = Release(int(sys.argv[4]), sha, len(data), "m", tuple("0123456789"), (1, 8, 8), False, 1, None, time.time())
taker = ReleaseTaker("b", ModelDeployment(state), BlobStore(Path(sys.argv[7])), lambda path: 1.0, 1.0)
taker.on_release(release, None)
for chunk in iter_chunks(data, 256 * 1024):
    taker.on_chunk(chunk)
assert taker.running == int(sys.argv[4]), taker.outcome
print(steps, flush=True)
"""


@pytest.mark.slow  # two dozen processes
def test_a_board_killed_at_any_instant_of_a_download_or_the_swap_holds_one_of_the_two_models_whole(
    tmp_path: Path,
) -> None:
    # Prepare: version 1 deployed; each trial downloads (in chunks), stages and deploys the other version as the
    # agent does, and is SIGKILLed at a file-system step drawn at random (before or after a write, an fsync, a link,
    # a rename, an unlink), whatever the disk's speed
    models = {1: _model(1.0), 2: _model(2.0)}
    files = {v: tmp_path / f"release-{v}.onnx" for v in models}
    for version, data in models.items():
        files[version].write_bytes(data)
    state = tmp_path / "board"
    first = ModelDeployment(state)
    first.stage(models[1], 1, _sha(models[1]))
    first.deploy(_sha(models[1]))

    def run_child(target: int, kill_at: int, when: str) -> subprocess.CompletedProcess[str]:
        blobs = tmp_path / f"blobs-{len(list(tmp_path.glob('blobs-*')))}"  # a fresh store: every trial downloads
        command = [sys.executable, "-c", _CHILD, str(state), _sha(models[target]), str(files[target]), str(target),
                   str(kill_at), when, str(blobs)]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)

    unkilled = [run_child(v, 0, "before") for v in (2, 1)]  # back at version 1; how many steps a deployment takes
    assert all(run.returncode == 0 for run in unkilled), unkilled[0].stderr
    steps = int(unkilled[0].stdout)
    rng = random.Random(0)
    outcomes: list[tuple[int, bool]] = []
    for trial in range(24):
        before = ModelDeployment(state).deployed()
        assert before is not None
        target = 2 if before.version == 1 else 1
        run = run_child(target, rng.randint(1, steps), rng.choice(("before", "after")))
        assert run.returncode in (-signal.SIGKILL, 0), run.stderr  # 0: the drawn step lay past its last (done)
        # Assert: a whole model that onnxruntime runs, one of the two, and the board says which
        after = ModelDeployment(state).deployed()
        assert after is not None and after.version in (before.version, target)
        assert _answer(state / "model" / "current.onnx") == float(after.version), trial
        assert (state / "model" / "version").read_text().strip() == str(after.version)
        onnx.load(str(state / "model" / "current.onnx"))  # parses whole
        outcomes.append((after.version, after.version == target))
    # the kills landed both before and after the commit point
    assert any(done for _, done in outcomes) and not all(done for _, done in outcomes), outcomes
