"""The transport seam, and the in-memory transport.

Coordinator and agent only ever call :class:`Transport`: ``publish``,
``subscribe`` and a message handler. Two implementations exist: this
in-memory one (a simulation in one process, deterministic delivery order)
and MQTT (one paho wrapper on each side). The math never sees which.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable

__all__ = ["InMemoryBus", "InMemoryTransport", "MessageHandler", "Transport", "topic_matches"]

MessageHandler = Callable[[str, bytes], None]


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT filter matching with ``+`` (one level) and ``#`` (the rest)."""
    filter_parts = topic_filter.split("/")
    topic_parts = topic.split("/")
    for index, part in enumerate(filter_parts):
        if part == "#":
            return True
        if index >= len(topic_parts) or (part != "+" and part != topic_parts[index]):
            return False
    return len(filter_parts) == len(topic_parts)


class Transport(ABC):
    """What the coordinator and the agent need from a message bus."""

    def __init__(self) -> None:
        self.bytes_sent = 0
        self.bytes_received = 0
        self._handler: MessageHandler | None = None
        self._reconnect_handler: Callable[[], None] | None = None

    def set_handler(self, handler: MessageHandler) -> None:
        self._handler = handler

    def set_reconnect_handler(self, handler: Callable[[], None]) -> None:
        """Called (in the polling thread) after the connection came back, e.g. to re-announce state."""
        self._reconnect_handler = handler

    def _deliver(self, topic: str, payload: bytes) -> None:
        self.bytes_received += len(payload)
        if self._handler is not None:
            self._handler(topic, payload)

    @abstractmethod
    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Send at QoS 1 (at least once)."""

    @abstractmethod
    def subscribe(self, topic_filter: str) -> None:
        """Receive messages on ``topic_filter`` through the handler."""


class InMemoryBus:
    """A broker in a deque: publishes are queued and delivered by :meth:`drain`, in order."""

    def __init__(self) -> None:
        self._endpoints: list[InMemoryTransport] = []
        # (topic, payload, endpoint, to_it_alone): a publish goes to all but its sender (MQTT v5
        # "no local"); a retained message replayed on subscribe goes to the subscriber alone.
        self._queue: deque[tuple[str, bytes, InMemoryTransport, bool]] = deque()
        self._retained: dict[str, bytes] = {}

    def connect(self) -> InMemoryTransport:
        endpoint = InMemoryTransport(self)
        self._endpoints.append(endpoint)
        return endpoint

    def _publish(self, sender: InMemoryTransport, topic: str, payload: bytes, retain: bool) -> None:
        if retain:
            self._retained[topic] = payload
        self._queue.append((topic, payload, sender, False))

    def _subscribed(self, endpoint: InMemoryTransport, topic_filter: str) -> None:
        for topic, payload in sorted(self._retained.items()):
            if topic_matches(topic_filter, topic):
                self._queue.append((topic, payload, endpoint, True))

    def drain(self, max_messages: int = 10_000_000) -> int:
        """Deliver queued messages (and those they cause) until the queue is empty."""
        delivered = 0
        while self._queue and delivered < max_messages:
            topic, payload, endpoint_of_record, alone = self._queue.popleft()
            targets = [endpoint_of_record] if alone else [e for e in self._endpoints if e is not endpoint_of_record]
            for endpoint in targets:
                if any(topic_matches(f, topic) for f in endpoint.filters):
                    endpoint._deliver(topic, payload)
            delivered += 1
        return delivered


class InMemoryTransport(Transport):
    def __init__(self, bus: InMemoryBus) -> None:
        super().__init__()
        self._bus = bus
        self.filters: list[str] = []

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.bytes_sent += len(payload)
        self._bus._publish(self, topic, payload, retain)

    def subscribe(self, topic_filter: str) -> None:
        self.filters.append(topic_filter)
        self._bus._subscribed(self, topic_filter)
