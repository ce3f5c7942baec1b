"""A release scored on a board's own data with onnxruntime: its test split, or a fixed slice of a train-only folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_agent import load_dataset
from edge_agent._release_score import score_release
from protocol import ModelError

DIGITS = tuple(str(d) for d in range(10))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import models
    from models._onnx import export_onnx

    out = tmp_path_factory.mktemp("score") / "m.onnx"
    state = models.model_state(models.build_model("cnn-digits", seed=0))
    images = load_dataset("digits").test.images[:64]
    export_onnx("cnn-digits", state, out, int8=False, check_images=images, classes=DIGITS)
    return out


def test_a_board_with_a_train_folder_only_scores_releases_on_a_fixed_slice_of_it(model: Path, tmp_path: Path) -> None:
    # Prepare: a board whose images are in train/<class>/ only (no test/), of three classes
    digits = load_dataset("digits").test
    for index in np.flatnonzero(np.isin(digits.labels, (1, 4, 7)))[:60]:
        path = tmp_path / "board" / "train" / str(digits.labels[index]) / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digits.images[index][0]).save(path)
    board = load_dataset(f"folder:{tmp_path / 'board'}")
    assert len(board.test) == 0
    # Execute: twice, as two releases would be
    first, again = (score_release(model, board, DIGITS) for _ in range(2))
    # Assert: a score of the same images each time (an untrained model: near chance, never an error)
    assert 0.0 <= first <= 1.0 and first == again
    assert score_release(model, load_dataset("digits"), DIGITS) >= 0.0  # a data set with its own test split
    with pytest.raises(ModelError, match="cannot load"):
        score_release(
            tmp_path
            / "board"
            / "train"
            / "1"
            / next(iter(p.name for p in (tmp_path / "board" / "train" / "1").iterdir())),
            board,
            DIGITS,
        )
