"""A board taking model releases (``ReleaseTaker``) with a real deployment folder and blob store: the score decides,
a tampered chunk or a release of other classes is refused and the deployed model stays, a rollback is taken."""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_agent._deployment import ModelDeployment
from edge_agent._release_taker import ReleaseTaker
from protocol import BlobChunk, BlobStore, ProtocolError, Release, iter_chunks

CLASSES = tuple("0123456789")


def _model(scale: float) -> bytes:
    weights = numpy_helper.from_array(np.full(4096, scale, dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "m",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4096])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4096])], [weights])  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def _release(version: int, model: bytes, **changes: object) -> Release:
    release = Release(version, hashlib.sha256(model).hexdigest(), len(model), "cnn-digits", CLASSES, (1, 8, 8), True,
                      version, None, time.time())  # fmt: skip
    return replace(release, **changes)  # type: ignore[arg-type]


class Board:
    def __init__(self, root: Path, margin: float = 0.0) -> None:
        self.scores: dict[str, float] = {}  # model sha256 -> its accuracy here (what the worker would measure)
        self.deployment = ModelDeployment(root / "board")
        self.taker = ReleaseTaker("b", self.deployment, BlobStore(root / "blobs"), self._score, margin)

    def _score(self, path: Path) -> float:
        return self.scores[hashlib.sha256(path.read_bytes()).hexdigest()]

    def take(self, release: Release, model: bytes, chunks: list[BlobChunk] | None = None) -> None:
        request = self.taker.on_release(release, CLASSES)
        assert request is not None and request.blob_id == release.model_id and self.taker.wants(release.model_id)
        for chunk in chunks if chunks is not None else list(iter_chunks(model, 1024)):
            self.taker.on_chunk(chunk)


def test_a_release_is_deployed_unless_it_scores_worse_than_the_deployed_one_and_a_rollback_is_taken(
    tmp_path: Path,
) -> None:
    board = Board(tmp_path, margin=0.01)
    one, two, three = _model(1.0), _model(2.0), _model(3.0)
    board.scores = {hashlib.sha256(m).hexdigest(): s for m, s in ((one, 0.80), (two, 0.795), (three, 0.60))}
    # Execute + Assert: the first release; one within the margin; one far below it
    board.take(_release(1, one), one)
    assert board.taker.running == 1 and board.taker.outcome == (1, "deployed (scores 0.8000 here)")
    board.take(_release(2, two), two)
    assert board.taker.running == 2
    board.take(_release(3, three), three)
    assert board.taker.running == 2
    assert board.taker.outcome is not None and board.taker.outcome[0] == 3
    assert "scores 0.6000 on this board's held-out data, the deployed release 2 0.7950" in board.taker.outcome[1]
    assert board.taker.on_release(_release(3, three), CLASSES) is None  # refused once: not fetched again
    # the operator goes back to release 1: taken, whatever it scores (here from the blob it holds: no fetch)
    assert board.taker.on_release(_release(1, one), CLASSES) is None
    assert board.taker.running == 1 and board.deployment.previous_release().version == 2  # type: ignore[union-attr]


def test_a_tampered_chunk_or_a_release_of_other_classes_leaves_the_deployed_model(tmp_path: Path) -> None:
    board = Board(tmp_path)
    one, two = _model(1.0), _model(2.0)
    board.scores = {hashlib.sha256(m).hexdigest(): 0.9 for m in (one, two)}
    board.take(_release(1, one), one)
    # Execute: release 2's model with one chunk's bytes changed (its chunk hash is the original's)
    chunks = list(iter_chunks(two, 1024))
    bad = replace(chunks[1], data=bytes([chunks[1].data[0] ^ 1]) + chunks[1].data[1:])
    with pytest.raises(ProtocolError, match="hash"):
        board.take(_release(2, two), two, [chunks[0], bad])
    # ... a chunk that lies about the model's size; a release for another class list
    with pytest.raises(ProtocolError, match="release 2 is"):
        board.taker.on_chunk(replace(chunks[2], total_size=len(two) + 1))
    assert board.taker.on_release(_release(4, two, classes=tuple("abcdefghij")), CLASSES) is None
    # Assert: still release 1, whole; the refusal names the classes
    assert board.taker.running == 1 and board.deployment.current.read_bytes() == one
    assert board.taker.outcome is not None and "classes are not the fleet's" in board.taker.outcome[1]
    # release 2 offered again, its chunks whole this time: taken
    board.take(_release(2, two), two)
    assert board.taker.running == 2 and board.deployment.current.read_bytes() == two


def test_a_deployed_model_edited_on_disk_is_reported_not_raised_and_the_next_release_replaces_it(
    tmp_path: Path,
) -> None:
    board = Board(tmp_path)
    one, two = _model(1.0), _model(2.0)
    board.scores = {hashlib.sha256(m).hexdigest(): 0.9 for m in (one, two)}
    board.take(_release(1, one), one)
    board.deployment.current.write_bytes(b"not the release")  # someone edited the board's model file
    assert board.taker.running is None and board.taker.running_score is None
    board.take(_release(2, two), two)
    assert board.taker.running == 2 and board.taker.running_score == 0.9


def test_outside_the_train_window_a_release_waits_and_is_taken_when_the_window_opens(tmp_path: Path) -> None:
    board = Board(tmp_path)
    one = _model(1.0)
    board.scores = {hashlib.sha256(one).hexdigest(): 0.9}
    open_now = [False]
    board.taker.may_work = lambda: open_now[0]
    # Execute + Assert: heard outside the window, nothing fetched; the window opens: it is due, then fetched
    assert board.taker.on_release(_release(1, one), CLASSES) is None and board.taker.due() is None
    open_now[0] = True
    due = board.taker.due()
    assert due is not None and due.version == 1 and board.taker.due() is None
    board.take(due, one)
    assert board.taker.running == 1
