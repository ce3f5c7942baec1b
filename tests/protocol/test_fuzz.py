"""Property-based fuzzing of every decoder of network (or operator) input.

Each must either return a typed value or raise the project's own rejection
error; nothing else, no hang (hypothesis' deadline), no allocation beyond what
the input holds (declared sizes are checked against the buffer first).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

from edge_agent._daemon import load_agent_config
from edge_agent._gate import TrainWindow
from protocol import (
    Ack,
    BlobAssembler,
    BlobChunk,
    BlobRequest,
    BlobStore,
    BrokerAddress,
    ConfigError,
    DeviceState,
    EnrollReply,
    EnrollRequest,
    Failure,
    MaskedUpdate,
    Progress,
    ProtocolError,
    Release,
    SecAggForward,
    SecAggKeys,
    SecAggRoster,
    SecAggShares,
    SecAggUnmask,
    Task,
    Topics,
    TrainConfig,
    UnmaskRequest,
    Update,
    decode_delta,
    decode_message,
    decode_tensors,
    encode_message,
    encode_tensors,
    iter_chunks,
)
from testing import raw_frame

CLASSES = tuple("0123456789")  # the fleet's class names every task carries

SHA = "ab" * 32
# fmt: off
VALID_FRAMES = [
    encode_message(DeviceState(device_id="d-1", state="online", num_samples=3, label_counts=(1.0, 2.0))),
    encode_message(
        Task(
            round=2,
            device_id="d-1",
            model_name="cnn-digits",
            model_id=SHA,
            model_size=9,
            config=TrainConfig(),
            classes=CLASSES,
        )
    ),
    encode_message(
        Update(
            round=2,
            device_id="d-1",
            base_model_id=SHA,
            num_samples=4,
            train_loss=0.5,
            train_accuracy=0.5,
            delta={"w": np.ones((2, 3), np.float32), "n": np.array(2)},
        )
    ),
    encode_message(Failure(round=2, device_id="d-1", reason="oom")),
    encode_message(Progress(round=2, device_id="d-1", seconds=12.5)),
    encode_message(Ack(round=2, device_id="d-1", accepted=True)),
    encode_message(BlobRequest(blob_id=SHA, chunks=(0, 1))),
    encode_message(next(iter_chunks(b"0123456789" * 50, 128))),
    encode_message(SecAggKeys(round=2, device_id="d-1", cipher_key=bytes(32), mask_key=bytes(range(32)))),
    encode_message(SecAggRoster(round=2, device_id="d-1", participants=("d-1", "d-2", "d-3"), degree=2, threshold=2,
                                length=7, keys={"d-2": (bytes(32), bytes(32)), "d-3": (bytes(32), bytes(32))})),
    encode_message(SecAggShares(round=2, device_id="d-1", sealed={"d-2": bytes(160)})),
    encode_message(SecAggForward(round=2, device_id="d-1", sealed={"d-3": bytes(160)})),
    encode_message(MaskedUpdate(round=2, device_id="d-1", base_model_id=SHA, words=bytes(56))),
    encode_message(UnmaskRequest(round=2, device_id="d-1", survivors=("d-1", "d-2"), dropped=("d-3",))),
    encode_message(SecAggUnmask(round=2, device_id="d-1",
                                shares={"d-2": ("seed", bytes(66)), "d-3": ("key", bytes(66))})),
    encode_message(Release(version=2, model_id=SHA, model_size=1000, model_name="cnn-digits",
                           classes=tuple("0123456789"), input_shape=(1, 8, 8), int8=True, round=3, accuracy=0.9,
                           created=1.7e9, note="n")),
]
# fmt: on

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
FIELDS = ["round", "device_id", "state", "num_samples", "label_counts", "model_name", "model_id", "model_size",
          "config", "base_model_id", "train_loss", "train_accuracy", "accepted", "reason", "blob_id", "chunks",
          "index", "count", "total_size", "chunk_sha256", "phase", "seconds", "cipher_key", "mask_key",
          "participants", "degree", "threshold", "length", "keys", "sealed", "survivors", "dropped",
          "shares", "version", "input_shape", "int8", "accuracy", "created", "note"]  # fmt: skip
SECAGG_KINDS = ["secagg-keys", "secagg-roster", "secagg-shares", "secagg-forward", "masked-update",
                "secagg-unmask-request", "secagg-unmask"]  # fmt: skip


_frame = raw_frame


def _decodes_or_rejects(payload: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_message(payload)


@given(st.binary(max_size=4096))
def test_arbitrary_bytes(payload: bytes) -> None:
    _decodes_or_rejects(payload)


@given(st.sampled_from(VALID_FRAMES), st.data())
def test_mutated_valid_frames(frame: bytes, data: st.DataObject) -> None:
    mutated = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 8))):
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        position = data.draw(st.integers(0, max(0, len(mutated) - 1)))
        if action == "flip" and mutated:
            mutated[position] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del mutated[position:]
        else:
            mutated[position:position] = data.draw(st.binary(min_size=1, max_size=16))
    _decodes_or_rejects(bytes(mutated))


@given(
    st.sampled_from(["state", "task", "update", "failure", "ack", "blob-req", "blob-chunk", "zap", *SECAGG_KINDS]),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=12),
    st.binary(max_size=256),
)
def test_structured_headers(kind: str, fields: dict, body: bytes) -> None:
    header = json.dumps({**fields, "type": kind}, allow_nan=True).encode()
    _decodes_or_rejects(_frame(header, body))


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.fixed_dictionaries({
            "dtype": st.sampled_from(["F32", "F64", "I64", "I8", "U8", "BF16", "F16", "BOOL", "X"]),
            "shape": st.lists(st.integers(-2, 2**40), max_size=4),
            "data_offsets": st.lists(st.integers(-2, 2**40), min_size=0, max_size=3),
        }),
        max_size=4,
    ),
    st.binary(max_size=512),
)  # fmt: skip
def test_tensor_headers_that_lie_about_sizes(tensors: dict, data: bytes) -> None:
    header = json.dumps(tensors).encode()
    try:
        decoded = decode_tensors(struct.pack("<Q", len(header)) + header + data)
    except ProtocolError:
        return
    assert sum(a.nbytes for a in decoded.values()) <= len(data)


@given(st.binary(max_size=64), st.integers(0, 2**64 - 1))
def test_tensor_header_length_prefix(tail: bytes, declared: int) -> None:
    with contextlib.suppress(ProtocolError):
        decode_tensors(struct.pack("<Q", declared) + tail)


@given(st.lists(st.tuples(st.integers(0, 10), st.binary(max_size=64), st.booleans()), max_size=20))
def test_chunks_from_an_attacker(chunks: list[tuple[int, bytes, bool]]) -> None:
    data = b"the real blob " * 20
    real = list(iter_chunks(data, 64))
    assembler = BlobAssembler(BlobStore(), real[0].blob_id, real[0].count, real[0].total_size)
    for index, payload, honest_hash in chunks:
        digest = hashlib.sha256(payload).hexdigest() if honest_hash else "0" * 64
        chunk = BlobChunk(real[0].blob_id, min(index, real[0].count - 1), real[0].count, real[0].total_size,
                          digest, payload)  # fmt: skip
        with contextlib.suppress(ProtocolError):
            assert not assembler.add(chunk) or payload == real[chunk.index].data


@given(st.dictionaries(st.text(max_size=12), json_values, max_size=8))
def test_train_config_from_json(value: dict) -> None:
    with contextlib.suppress(ProtocolError):
        TrainConfig.from_json(value)


@given(st.text(max_size=120))
def test_topics(topic: str) -> None:
    try:
        parsed = Topics("fleet").parse(topic)
    except ProtocolError:
        return
    assert topic == Topics("fleet").device(parsed.device_id, parsed.channel)


@given(st.text(max_size=80))
def test_broker_urls_and_train_windows(text: str) -> None:
    for parse in (BrokerAddress.parse, TrainWindow.parse):
        with contextlib.suppress(ConfigError):
            parse(text)


@given(st.text(max_size=400))
def test_agent_config_files(tmp_path_factory, text: str) -> None:  # type: ignore[no-untyped-def]
    path = Path(tmp_path_factory.mktemp("cfg")) / "edge.toml"
    path.write_text(text)
    with contextlib.suppress(ConfigError):
        load_agent_config(path, {})


def test_valid_frames_still_decode() -> None:
    # The fuzz tests above would pass on a decoder that rejects everything; this one would not.
    for frame in VALID_FRAMES:
        assert decode_message(frame).TYPE
    assert decode_tensors(encode_tensors({"w": np.zeros(3, np.float32)}))["w"].shape == (3,)


@given(
    st.sampled_from(["int8", "int4", "fp16", ""]),
    st.dictionaries(
        st.sampled_from(["q", "scales", "ints", "w"]),
        st.tuples(st.sampled_from(["int8", "uint8", "float32", "int64", "float64"]), st.integers(0, 64)),
        max_size=4,
    ),
    st.floats(allow_nan=True, allow_infinity=True),
)
def test_codec_payloads(codec: str, layout: dict, fill: float) -> None:
    template = {"a": np.zeros((4, 3), np.float32), "b": np.zeros(5, np.float32), "n": np.zeros((), np.int64)}
    payload = {}
    for name, (dtype, size) in layout.items():
        value = fill if np.dtype(dtype).kind == "f" else (int(fill) % 256 if np.isfinite(fill) else 0)
        with np.errstate(all="ignore"):  # the test's own casts of extreme fills
            payload[name] = np.full(size, value).astype(dtype)
    with contextlib.suppress(ProtocolError):
        decoded = decode_delta(payload, codec, template)
        if codec in ("int8", "int4"):
            assert {n: a.shape for n, a in decoded.items()} == {n: a.shape for n, a in template.items()}


# What json.loads lets through or turns into the wrong exception: integers past CPython's 4,300-digit limit
# (ValueError), integers no float can hold (OverflowError where they become one), huge floats (inf),
# NaN and Infinity, nesting deep enough for RecursionError, bytes that are not UTF-8.
hostile_values = st.one_of(
    st.integers(18, 6000).map(lambda n: "9" * n),
    st.integers(18, 6000).map(lambda n: "-" + "1" * n),
    st.sampled_from(["1e999", "-1e999", "1e308", "NaN", "Infinity", "-Infinity", "1" + "0" * 400 + ".5", "0e-99999"]),
    st.integers(1, 100_000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(1, 20_000).map(lambda depth: '{"a":' * depth + "1" + "}" * depth),
)
hostile_bytes = st.binary(min_size=1, max_size=8).filter(lambda b: not _is_utf8(b))


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _every_decoder(payload_header: bytes) -> None:
    """Each decoder of network JSON returns or raises ProtocolError: never anything else."""
    _decodes_or_rejects(_frame(payload_header))
    for decoder in (EnrollRequest.decode, EnrollReply.decode):
        with contextlib.suppress(ProtocolError):
            decoder(payload_header)


KINDS = ["state", "task", "update", "failure", "ack", "blob-req", "blob-chunk", "enroll-request", "enroll-reply",
         *SECAGG_KINDS]  # fmt: skip


@given(st.sampled_from(KINDS), st.sampled_from([*FIELDS, "secret", "public_key", "ok"]), hostile_values)
def test_hostile_numbers_and_nesting_in_every_decoder(kind: str, field: str, value: str) -> None:
    _every_decoder(f'{{"type":"{kind}","{field}":{value}}}'.encode())


@given(st.sampled_from(["state", "task", "enroll-request"]), hostile_bytes)
def test_headers_that_are_not_utf8(kind: str, junk: bytes) -> None:
    _every_decoder(b'{"type":"' + kind.encode() + b'","device_id":"' + junk + b'"}')


def test_the_reported_killers_are_protocol_errors() -> None:
    for value in ("9" * 5000, "9" * 400, "1e999", "NaN"):
        header = f'{{"type":"state","device_id":"d","state":"online","num_samples":{value}}}'.encode()
        with pytest.raises(ProtocolError):
            decode_message(_frame(header))
        with pytest.raises(ProtocolError):
            EnrollRequest.decode(f'{{"type":"enroll-request","secret":{value},"public_key":"k"}}'.encode())
