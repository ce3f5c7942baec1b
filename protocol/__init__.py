"""The contract both sides speak: topics, messages, tensors, blobs, transport seam.

Imports no torch and knows nothing about rounds or training. Names are imported on first use (PEP 562), so
that a command loads only the modules it needs (the administrative commands start in well under a second).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._blobs import (
        DEFAULT_CHUNK_SIZE,
        MIN_CHUNK_SIZE,
        BlobAssembler,
        BlobStore,
        atomic_write,
        chunk_count,
        iter_chunks,
    )
    from ._cli import exit_on_error, new_app, uninstall_command
    from ._codec import CODECS, Codec, decode_delta, encode_delta
    from ._enrollment import EnrollmentToken, EnrollReply, EnrollRequest, enroll_topic
    from ._errors import BrokerRefused, ConfigError, DataError, GenflError, ModelError, ProtocolError, TransportError
    from ._messages import (
        AUGMENTATIONS,
        PROTOCOL_VERSION,
        Ack,
        Augmentation,
        BlobChunk,
        BlobRequest,
        DeviceState,
        Failure,
        Message,
        Task,
        TrainConfig,
        Update,
        decode_message,
        encode_message,
    )
    from ._mqtt import BrokerAddress, MqttTransport, Will
    from ._signing import (
        FrameGuard,
        OpenGuard,
        SignedGuard,
        generate_signing_key,
        load_signing_key,
        public_key_from_text,
        public_key_text,
        save_signing_key,
        sign_frame,
        verify_frame,
        write_secret,
    )
    from ._synthetic import SyntheticBatch, decode_synthetic, encode_synthetic
    from ._systemd import (
        HARDENING,
        Notifier,
        UnitInstall,
        find_executable,
        install_unit,
        systemd_is_running,
        uninstall_unit,
        unit_head,
    )
    from ._tensors import TensorDict, blob_id, decode_tensors, encode_tensors
    from ._topics import DEVICE_CHANNELS, ParsedTopic, Topics, validate_name
    from ._transport import InMemoryBus, InMemoryTransport, MessageHandler, Transport, topic_matches

_WHERE = {
    "DEFAULT_CHUNK_SIZE": "_blobs",
    "MIN_CHUNK_SIZE": "_blobs",
    "BlobAssembler": "_blobs",
    "BlobStore": "_blobs",
    "atomic_write": "_blobs",
    "chunk_count": "_blobs",
    "iter_chunks": "_blobs",
    "exit_on_error": "_cli",
    "new_app": "_cli",
    "uninstall_command": "_cli",
    "CODECS": "_codec",
    "Codec": "_codec",
    "decode_delta": "_codec",
    "encode_delta": "_codec",
    "EnrollmentToken": "_enrollment",
    "EnrollReply": "_enrollment",
    "EnrollRequest": "_enrollment",
    "enroll_topic": "_enrollment",
    "BrokerRefused": "_errors",
    "ConfigError": "_errors",
    "DataError": "_errors",
    "GenflError": "_errors",
    "ModelError": "_errors",
    "ProtocolError": "_errors",
    "TransportError": "_errors",
    "AUGMENTATIONS": "_messages",
    "PROTOCOL_VERSION": "_messages",
    "Ack": "_messages",
    "Augmentation": "_messages",
    "BlobChunk": "_messages",
    "BlobRequest": "_messages",
    "DeviceState": "_messages",
    "Failure": "_messages",
    "Message": "_messages",
    "Task": "_messages",
    "TrainConfig": "_messages",
    "Update": "_messages",
    "decode_message": "_messages",
    "encode_message": "_messages",
    "BrokerAddress": "_mqtt",
    "MqttTransport": "_mqtt",
    "Will": "_mqtt",
    "FrameGuard": "_signing",
    "OpenGuard": "_signing",
    "SignedGuard": "_signing",
    "generate_signing_key": "_signing",
    "load_signing_key": "_signing",
    "public_key_from_text": "_signing",
    "public_key_text": "_signing",
    "save_signing_key": "_signing",
    "sign_frame": "_signing",
    "verify_frame": "_signing",
    "write_secret": "_signing",
    "SyntheticBatch": "_synthetic",
    "decode_synthetic": "_synthetic",
    "encode_synthetic": "_synthetic",
    "HARDENING": "_systemd",
    "Notifier": "_systemd",
    "UnitInstall": "_systemd",
    "find_executable": "_systemd",
    "install_unit": "_systemd",
    "systemd_is_running": "_systemd",
    "uninstall_unit": "_systemd",
    "unit_head": "_systemd",
    "TensorDict": "_tensors",
    "blob_id": "_tensors",
    "decode_tensors": "_tensors",
    "encode_tensors": "_tensors",
    "DEVICE_CHANNELS": "_topics",
    "ParsedTopic": "_topics",
    "Topics": "_topics",
    "validate_name": "_topics",
    "InMemoryBus": "_transport",
    "InMemoryTransport": "_transport",
    "MessageHandler": "_transport",
    "Transport": "_transport",
    "topic_matches": "_transport",
}

__all__ = [
    "AUGMENTATIONS",
    "Augmentation",
    "Codec",
    "SyntheticBatch",
    "decode_synthetic",
    "encode_synthetic",
    "CODECS",
    "HARDENING",
    "DEFAULT_CHUNK_SIZE",
    "MIN_CHUNK_SIZE",
    "DEVICE_CHANNELS",
    "PROTOCOL_VERSION",
    "Ack",
    "BlobAssembler",
    "BlobChunk",
    "BlobRequest",
    "BlobStore",
    "BrokerAddress",
    "BrokerRefused",
    "ConfigError",
    "DataError",
    "DeviceState",
    "EnrollReply",
    "EnrollRequest",
    "EnrollmentToken",
    "FrameGuard",
    "OpenGuard",
    "SignedGuard",
    "Failure",
    "GenflError",
    "InMemoryBus",
    "InMemoryTransport",
    "Message",
    "MessageHandler",
    "ModelError",
    "MqttTransport",
    "Notifier",
    "ParsedTopic",
    "ProtocolError",
    "Task",
    "TensorDict",
    "Topics",
    "TrainConfig",
    "Transport",
    "TransportError",
    "UnitInstall",
    "Update",
    "Will",
    "atomic_write",
    "blob_id",
    "chunk_count",
    "decode_delta",
    "decode_message",
    "decode_tensors",
    "encode_delta",
    "encode_message",
    "encode_tensors",
    "exit_on_error",
    "new_app",
    "uninstall_command",
    "enroll_topic",
    "generate_signing_key",
    "load_signing_key",
    "public_key_from_text",
    "public_key_text",
    "save_signing_key",
    "sign_frame",
    "verify_frame",
    "write_secret",
    "find_executable",
    "install_unit",
    "iter_chunks",
    "systemd_is_running",
    "topic_matches",
    "uninstall_unit",
    "unit_head",
    "validate_name",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
