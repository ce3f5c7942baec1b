"""The fleet's class list on the wire and in the pure helpers: one numbering for every board."""

from __future__ import annotations

import json

import numpy as np
import pytest

from protocol import (
    ConfigError,
    DataError,
    EnrollReply,
    ProtocolError,
    SyntheticBatch,
    Task,
    TrainConfig,
    Update,
    class_mapping,
    decode_message,
    decode_synthetic,
    default_classes,
    encode_message,
    encode_synthetic,
    parse_classes,
    validate_classes,
)
from testing import raw_frame

CIFAR = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SHA = "a" * 64


_frame = raw_frame


def _task_header(classes: object) -> dict[str, object]:
    return {"type": "task", "round": 1, "device_id": "d", "model_name": "cnn-small", "model_id": SHA,
            "model_size": 9, "config": TrainConfig().to_json(), "classes": classes}  # fmt: skip


def test_a_board_lacking_classes_keeps_the_fleets_numbers_for_the_ones_it_has() -> None:
    # a board with deer dog frog horse ship truck: sorted, its own numbers would be 0..5
    assert class_mapping(("deer", "dog", "frog", "horse", "ship", "truck"), CIFAR, "board") == (4, 5, 6, 7, 8, 9)
    assert class_mapping(CIFAR, CIFAR, "board") == tuple(range(10))


def test_a_class_the_fleet_does_not_know_is_one_line_naming_it_and_the_fleet_list() -> None:
    with pytest.raises(DataError) as info:
        class_mapping(("cat", "kitten"), CIFAR, "folder:/data")
    message = str(info.value)
    assert "\n" not in message and "'kitten'" in message and "folder:/data" in message
    assert "fleet's 10 classes (airplane, automobile" in message


@pytest.mark.parametrize(
    "names",
    [[], ["a", "a"], ["a/b"], ["a,b"], [".hidden"], [" padded"], ["x" * 65], ["ok", 3], "abc", None, ["\x00"]],
)
def test_bad_class_lists_are_config_errors(names: object) -> None:
    with pytest.raises(ConfigError):
        validate_classes(names)  # type: ignore[arg-type]


def test_the_list_must_fit_the_model_and_parses_from_a_flag() -> None:
    assert parse_classes("cat, dog,bird") == ("cat", "dog", "bird")
    assert default_classes(3) == ("0", "1", "2")
    with pytest.raises(ConfigError, match="predicts 10"):
        parse_classes("cat,dog", expected=10)


def test_every_task_carries_the_fleets_classes_and_round_trips_them() -> None:
    task = Task(round=1, device_id="d", model_name="cnn-small", model_id=SHA, model_size=9, config=TrainConfig(),
                classes=CIFAR)  # fmt: skip
    assert decode_message(encode_message(task), Task).classes == CIFAR


@pytest.mark.parametrize("classes", [None, "cat,dog", ["cat", "cat"], ["a/b"], [1, 2], [["x"]], [], ["x"] * 10_001])
def test_a_task_with_a_hostile_class_list_is_a_protocol_error(classes: object) -> None:
    with pytest.raises(ProtocolError):
        decode_message(_frame(_task_header(classes)))


def test_a_task_without_classes_is_refused() -> None:
    header = _task_header(None)
    del header["classes"]
    with pytest.raises(ProtocolError):
        decode_message(_frame(header))


def test_the_enrollment_reply_tells_the_board_the_fleets_classes() -> None:
    reply = EnrollReply(ok=True, device_id="b-1", fleet="f", classes=",".join(CIFAR)).signed("s", "c")
    back = EnrollReply.decode(reply.encode())
    back.verify("s", "c")
    assert parse_classes(back.classes) == CIFAR
    hostile = json.loads(reply.encode())
    hostile["classes"] = "cat,cat"
    with pytest.raises(ProtocolError):
        EnrollReply.decode(json.dumps(hostile).encode())


def test_probes_and_their_scores_round_trip_and_are_bounded() -> None:
    images = np.zeros((2, 1, 8, 8), np.uint8)
    batch = SyntheticBatch(images, np.array([1, 2]), None, np.ones((3, 1, 8, 8), np.uint8), np.array([0, 0, 9]))
    back = decode_synthetic(encode_synthetic(batch), (1, 8, 8), 10)
    assert back.probes == 3 and back.probe_labels is not None and back.probe_labels.tolist() == [0, 0, 9]
    update = Update(round=1, device_id="d", base_model_id=SHA, num_samples=1, train_loss=0.0, train_accuracy=0.0,
                    delta={"w": np.zeros(1, np.float32)}, probe_scores=(0, 128, 255))  # fmt: skip
    assert decode_message(encode_message(update), Update).probe_scores == (0, 128, 255)
    for scores in ((256,), (-1,), (1.5,), ("9",), (True,)):
        with pytest.raises(ProtocolError):
            Update(**{**update.__dict__, "probe_scores": scores})


def test_a_model_blob_naming_its_classes_has_one_id_in_any_process() -> None:
    # safetensors writes metadata from a hash map; the blob (and its id, the model id) must not depend on it
    from protocol import blob_id, decode_tensors, encode_tensors

    tensors = {"w": np.arange(6, dtype=np.float32), "n": np.array(3, dtype=np.int64)}
    first = encode_tensors(tensors, {"model": "m", "classes": json.dumps(list(CIFAR)), "z": "1"})
    other = encode_tensors(decode_tensors(first), {"z": "1", "classes": json.dumps(list(CIFAR)), "model": "m"})
    assert blob_id(first) == blob_id(other)
    assert np.array_equal(decode_tensors(first)["w"], tensors["w"])
