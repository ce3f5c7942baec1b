"""The contract both sides speak: topics, messages, tensors, blobs, transport seam.

Imports no torch and knows nothing about rounds or training. Names are imported on first use (PEP 562), so
that a command loads only the modules it needs (the administrative commands start in well under a second).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_names

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
    from ._classes import (
        MAX_CLASSES,
        class_mapping,
        default_classes,
        describe_classes,
        parse_classes,
        validate_classes,
    )
    from ._cli import exit_on_error, new_app, uninstall_command
    from ._codec import CODECS, Codec, decode_delta, encode_delta
    from ._enrollment import EnrollmentToken, EnrollReply, EnrollRequest, enroll_topic
    from ._errors import BrokerRefused, ConfigError, DataError, GenflError, ModelError, ProtocolError, TransportError
    from ._messages import (
        AUGMENTATIONS,
        DEFAULT_ROUND_TIMEOUT_S,
        PROGRESS_EVERY_S,
        PROTOCOL_VERSION,
        SYNTHETIC_NORMS,
        SYNTHETIC_RESTYLES,
        Ack,
        Augmentation,
        BlobChunk,
        BlobRequest,
        DeviceState,
        Failure,
        Message,
        Progress,
        SyntheticNorm,
        SyntheticRestyle,
        Task,
        TrainConfig,
        Update,
        decode_message,
        encode_message,
    )
    from ._mqtt import REFUSED_RETRY_S, BrokerAddress, MqttTransport, Will, parse_brokers, rotated
    from ._settings import options_from, overrides_from, setting, settings_leaves
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
    from ._synthetic import MAX_PROBES, SyntheticBatch, decode_synthetic, encode_synthetic
    from ._systemd import (
        HARDENING,
        Notifier,
        UnitInstall,
        check_can_run,
        check_executable_reachable,
        check_reachable,
        find_executable,
        install_unit,
        run_systemctl,
        systemd_is_running,
        uninstall_unit,
        unit_head,
    )
    from ._tensors import TensorDict, blob_id, decode_tensors, encode_tensors
    from ._topics import DEVICE_CHANNELS, ParsedTopic, Topics, validate_name
    from ._transport import InMemoryBus, InMemoryTransport, MessageHandler, Transport, topic_matches

_WHERE = {
    "DEFAULT_CHUNK_SIZE": "_blobs",
    "DEFAULT_ROUND_TIMEOUT_S": "_messages",
    "MIN_CHUNK_SIZE": "_blobs",
    "BlobAssembler": "_blobs",
    "BlobStore": "_blobs",
    "atomic_write": "_blobs",
    "chunk_count": "_blobs",
    "iter_chunks": "_blobs",
    "MAX_CLASSES": "_classes",
    "class_mapping": "_classes",
    "default_classes": "_classes",
    "describe_classes": "_classes",
    "parse_classes": "_classes",
    "validate_classes": "_classes",
    "exit_on_error": "_cli",
    "options_from": "_settings",
    "overrides_from": "_settings",
    "setting": "_settings",
    "settings_leaves": "_settings",
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
    "SYNTHETIC_NORMS": "_messages",
    "SYNTHETIC_RESTYLES": "_messages",
    "SyntheticRestyle": "_messages",
    "SyntheticNorm": "_messages",
    "PROTOCOL_VERSION": "_messages",
    "Ack": "_messages",
    "Augmentation": "_messages",
    "BlobChunk": "_messages",
    "BlobRequest": "_messages",
    "DeviceState": "_messages",
    "Failure": "_messages",
    "Progress": "_messages",
    "PROGRESS_EVERY_S": "_messages",
    "Message": "_messages",
    "Task": "_messages",
    "TrainConfig": "_messages",
    "Update": "_messages",
    "decode_message": "_messages",
    "encode_message": "_messages",
    "BrokerAddress": "_mqtt",
    "MqttTransport": "_mqtt",
    "REFUSED_RETRY_S": "_mqtt",
    "Will": "_mqtt",
    "parse_brokers": "_mqtt",
    "rotated": "_mqtt",
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
    "MAX_PROBES": "_synthetic",
    "decode_synthetic": "_synthetic",
    "encode_synthetic": "_synthetic",
    "HARDENING": "_systemd",
    "Notifier": "_systemd",
    "UnitInstall": "_systemd",
    "check_reachable": "_systemd",
    "find_executable": "_systemd",
    "install_unit": "_systemd",
    "check_can_run": "_systemd",
    "check_executable_reachable": "_systemd",
    "run_systemctl": "_systemd",
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

__all__ = list(_WHERE)  # every name the package offers, imported on first use


__getattr__ = lazy_names(__name__, _WHERE)


def __dir__() -> list[str]:
    return sorted(__all__)
