"""Topic layout. Everything of a fleet lives under ``genfl/<fleet>/``.

::

    genfl/<fleet>/devices/<id>/state        device -> server   retained, last will = offline
    genfl/<fleet>/devices/<id>/task         server -> device   round task
    genfl/<fleet>/devices/<id>/update       device -> server   trained update
    genfl/<fleet>/devices/<id>/ack          server -> device   update accepted / rejected
    genfl/<fleet>/devices/<id>/blob/req     device -> server   which chunks of which blob
    genfl/<fleet>/devices/<id>/blob/chunk   server -> device   one verified chunk

Each device's traffic stays in its own subtree so that a broker ACL
(``pattern readwrite genfl/<fleet>/devices/%u/#``) can confine it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ._errors import ConfigError, ProtocolError

__all__ = ["DEVICE_CHANNELS", "DeviceChannel", "ParsedTopic", "Topics", "validate_name"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

DeviceChannel = Literal["state", "task", "update", "ack", "blob/req", "blob/chunk"]
DEVICE_CHANNELS: tuple[DeviceChannel, ...] = ("state", "task", "update", "ack", "blob/req", "blob/chunk")


def validate_name(kind: str, value: str) -> str:
    """A fleet or device name: 1-64 of ``[A-Za-z0-9_.-]``, no MQTT wildcards or slashes."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ConfigError(f"invalid {kind} {value!r}: use 1-64 letters, digits, '_', '.', '-'")
    return value


@dataclass(frozen=True)
class ParsedTopic:
    device_id: str
    channel: DeviceChannel


@dataclass(frozen=True)
class Topics:
    """Topic names of one fleet."""

    fleet: str

    def __post_init__(self) -> None:
        validate_name("fleet", self.fleet)

    @property
    def root(self) -> str:
        return f"genfl/{self.fleet}"

    def device(self, device_id: str, channel: DeviceChannel) -> str:
        return f"{self.root}/devices/{device_id}/{channel}"

    def all_devices(self, channel: DeviceChannel) -> str:
        """Subscription filter for one channel of every device."""
        return f"{self.root}/devices/+/{channel}"

    def parse(self, topic: str) -> ParsedTopic:
        """Split a device topic, or raise ``ProtocolError('unknown-topic')``."""
        prefix = f"{self.root}/devices/"
        if not topic.startswith(prefix):
            raise ProtocolError("unknown-topic", topic[:200])
        device_id, _, channel = topic[len(prefix) :].partition("/")
        if not _NAME.fullmatch(device_id) or channel not in DEVICE_CHANNELS:
            raise ProtocolError("unknown-topic", topic[:200])
        return ParsedTopic(device_id=device_id, channel=channel)  # type: ignore[arg-type]
