import numpy as np
import pytest

from protocol import (
    Ack,
    BlobChunk,
    BlobRequest,
    DeviceState,
    ProtocolError,
    Task,
    TrainConfig,
    Update,
    decode_message,
    encode_message,
)
from testing import raw_frame

CLASSES = tuple("0123456789")  # the fleet's class names every task carries

SHA = "a" * 64


_frame = raw_frame


def _update() -> Update:
    return Update(
        round=3,
        device_id="dev-1",
        base_model_id=SHA,
        num_samples=12,
        train_loss=0.5,
        train_accuracy=0.75,
        delta={"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(4, dtype=np.int64)},
    )


@pytest.mark.parametrize(
    "message",
    [
        DeviceState(device_id="dev-1", state="online", num_samples=5, label_counts=(1.0, 2.5)),
        DeviceState(device_id="dev-1", state="offline", session="0123456789abcdef", sequence=0),
        Task(
            round=1,
            device_id="dev-1",
            model_name="cnn-digits",
            model_id=SHA,
            model_size=10,
            config=TrainConfig(),
            classes=CLASSES,
        ),
        Ack(round=2, device_id="dev-1", accepted=False, reason="closed-round"),
        BlobRequest(blob_id=SHA, chunks=(0, 3)),
        BlobChunk(blob_id=SHA, index=1, count=2, total_size=9, chunk_sha256=SHA, data=b"\x00\x01"),
    ],
)
def test_messages_round_trip(message) -> None:
    # Execute
    decoded = decode_message(encode_message(message))
    # Assert
    assert decoded == message


def test_update_round_trip_keeps_tensors_bit_exact() -> None:
    update = _update()
    decoded = decode_message(encode_message(update), Update)
    assert decoded == update
    assert set(decoded.delta) == {"w", "n"}
    np.testing.assert_array_equal(decoded.delta["w"], update.delta["w"])
    assert decoded.delta["n"].shape == ()  # 0-d BatchNorm counters stay 0-d


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "bad-frame"),
        (b"garbage bytes that are not a frame", "bad-frame"),
        (b"GFL\x09\x00\x00\x00\x02{}", "bad-version"),
        (b"GFL\x02\xff\xff\xff\xff{}", "bad-frame"),
        (b"GFL\x02\x00\x00\x00\x02[]", "bad-frame"),
        (_frame(b'{"type":"zap"}'), "unknown-type"),
        (_frame(b'{"type":"ack"}'), "bad-field"),
        (_frame(b'{"type":"ack","round":1,"device_id":"d","accepted":true}', b"body"), "bad-frame"),
        (_frame(b'{"type":"update"}', b"not safetensors"), "bad-tensors"),
    ],
)
def test_bad_frames_are_rejected_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_message(payload)
    assert info.value.reason == reason


def test_truncated_update_body_is_rejected() -> None:
    frame = encode_message(_update())
    with pytest.raises(ProtocolError) as info:
        decode_message(frame[:-5])
    assert info.value.reason == "bad-tensors"


def test_field_values_are_validated() -> None:
    with pytest.raises(ProtocolError, match="round"):
        decode_message(_frame(b'{"type":"ack","round":-1,"device_id":"d","accepted":true}'))
    with pytest.raises(ProtocolError, match="device id"):
        decode_message(_frame(b'{"type":"state","device_id":"dev/#","state":"online"}'))
    with pytest.raises(ProtocolError, match="accepted"):
        decode_message(_frame(b'{"type":"ack","round":1,"device_id":"d","accepted":"yes"}'))
    for bad, reason in [
        (b'"session":"0123456789abcdef"', "come together"),
        (b'"session":"XYZ0123456789abc","sequence":1', "hex digits"),
        (b'"session":["a"],"sequence":1', "hex digits"),
        (b'"session":"0123456789abcdef","sequence":-1', "sequence"),
        (b'"session":"0123456789abcdef","sequence":1e400', "out of range"),
        (b'"session":"0123456789abcdef","sequence":' + b"9" * 400, "400 characters"),
    ]:
        with pytest.raises(ProtocolError, match=reason):
            decode_message(_frame(b'{"type":"state","device_id":"d","state":"online",' + bad + b"}"))


def test_expect_rejects_the_wrong_message_type() -> None:
    frame = encode_message(Ack(round=2, device_id="dev-1", accepted=True))
    with pytest.raises(ProtocolError) as info:
        decode_message(frame, Task)
    assert info.value.reason == "unexpected-type"


def test_train_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ProtocolError):
        TrainConfig.from_json({"local_epochs": 1, "evil": True})
    with pytest.raises(ProtocolError):
        TrainConfig(learning_rate=float("nan"))
