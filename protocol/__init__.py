"""The contract both sides speak: topics, messages, tensors, blobs, transport seam.

Imports no torch and knows nothing about rounds or training.
"""

from ._blobs import DEFAULT_CHUNK_SIZE, BlobAssembler, BlobStore, atomic_write, chunk_count, iter_chunks
from ._codec import CODECS, decode_delta, encode_delta
from ._errors import ConfigError, DataError, GenflError, ModelError, ProtocolError, TransportError
from ._messages import (
    PROTOCOL_VERSION,
    Ack,
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
from ._systemd import (
    HARDENING,
    Notifier,
    UnitInstall,
    find_executable,
    install_unit,
    systemd_is_running,
    uninstall_unit,
)
from ._tensors import TensorDict, blob_id, decode_tensors, encode_tensors
from ._topics import DEVICE_CHANNELS, ParsedTopic, Topics, validate_name
from ._transport import InMemoryBus, InMemoryTransport, MessageHandler, Transport, topic_matches

__all__ = [
    "CODECS",
    "HARDENING",
    "DEFAULT_CHUNK_SIZE",
    "DEVICE_CHANNELS",
    "PROTOCOL_VERSION",
    "Ack",
    "BlobAssembler",
    "BlobChunk",
    "BlobRequest",
    "BlobStore",
    "BrokerAddress",
    "ConfigError",
    "DataError",
    "DeviceState",
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
    "find_executable",
    "install_unit",
    "iter_chunks",
    "systemd_is_running",
    "topic_matches",
    "uninstall_unit",
    "validate_name",
]
