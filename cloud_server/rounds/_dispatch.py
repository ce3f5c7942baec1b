"""Dispatch: one message from the device tree to the handler of its channel, after the frame guard opened it
(signature, known and unrevoked device). Anything wrong raises ProtocolError for the coordinator to count."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from protocol import (
    BlobRequest,
    DeviceState,
    Failure,
    FrameGuard,
    MaskedUpdate,
    Progress,
    ProtocolError,
    SecAggKeys,
    SecAggShares,
    SecAggUnmask,
    Topics,
    Update,
    decode_message,
)

from ._secure_round import SecAggFrame

__all__ = ["Handlers", "dispatch"]

SERVER_CHANNELS = ("task", "ack", "blob/chunk")  # the server's own traffic, seen through the wide subscription
_FROM_DEVICES = (Update, Failure, Progress, SecAggKeys, SecAggShares, MaskedUpdate, SecAggUnmask)  # the update topic


@dataclass(frozen=True)
class Handlers:
    """What the coordinator does with each kind of message (the device id is the topic's)."""

    state: Callable[[str, DeviceState], None]
    update: Callable[[str, Update, str], None]  # ... and the sha256 of the frame (a replay is byte-identical)
    progress: Callable[[str, Progress], None]
    failure: Callable[[str, Failure], None]
    blob_request: Callable[[str, BlobRequest], None]
    heard: Callable[[str], None]  # a device that asks for blobs or answers has its task
    secagg: Callable[[str, SecAggFrame], None]  # a device's frame of a secure-aggregation round


def dispatch(topics: Topics, guard: FrameGuard, topic: str, payload: bytes, handlers: Handlers) -> None:
    parsed = topics.parse(topic)
    if parsed.channel in SERVER_CHANNELS:
        return
    if parsed.channel == "state" and not payload:
        return  # an empty retained payload clears a state; nothing to register
    frame = guard.open(parsed.device_id, payload)
    device_id = parsed.device_id
    if parsed.channel in ("update", "blob/req"):
        handlers.heard(device_id)  # (a secure round's frames too: the device has its task)
    if parsed.channel == "state":
        handlers.state(device_id, decode_message(frame, DeviceState))
    elif parsed.channel == "update":
        message: Update | Failure | Progress | SecAggFrame = decode_message(frame, _FROM_DEVICES)
        if isinstance(message, Update):
            handlers.update(device_id, message, hashlib.sha256(payload).hexdigest())
        elif isinstance(message, Progress):
            handlers.progress(device_id, message)
        elif isinstance(message, Failure):
            handlers.failure(device_id, message)
        else:
            handlers.secagg(device_id, message)
    elif parsed.channel == "blob/req":
        handlers.blob_request(device_id, decode_message(frame, BlobRequest))
    else:
        raise ProtocolError("unexpected-channel", parsed.channel)
