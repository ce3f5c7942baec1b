"""The transport seam, and the in-memory transport.

Coordinator and agent only ever call :class:`Transport`: ``connect``,
``publish``, ``subscribe``, a message handler that ``poll`` feeds in the
caller's thread, ``flush`` and ``close`` (or ``with transport:``). Two
implementations exist: this in-memory one (a simulation in one process,
deterministic delivery order) and MQTT (one paho wrapper on each side, which
holds the one reconnect policy). The math never sees which.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from types import TracebackType

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

    def __enter__(self) -> Transport:
        """Connected (at the default timeout, unless :meth:`connect` ran already); closed on leaving."""
        if not self.connected:
            self.connect()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    @property
    @abstractmethod
    def connected(self) -> bool:
        """Whether the bus takes messages now."""

    @abstractmethod
    def connect(self, timeout_s: float = 10.0) -> None:
        """Join the bus; TransportError (BrokerRefused for a refused login) if it cannot within ``timeout_s``."""

    @abstractmethod
    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Send at QoS 1 (at least once)."""

    @abstractmethod
    def subscribe(self, topic_filter: str) -> None:
        """Receive messages on ``topic_filter`` through the handler."""

    @abstractmethod
    def poll(self, timeout_s: float = 0.1) -> int:
        """Hand what arrived to the handler in this thread (waiting up to ``timeout_s``); how many messages."""

    @abstractmethod
    def flush(self, timeout_s: float = 5.0) -> None:
        """Return once the bus has everything published so far (or ``timeout_s`` passed)."""

    @abstractmethod
    def close(self) -> None:
        """Send what is queued and leave the bus."""


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

        self._joined = True  # bus.connect() hands out a joined endpoint

    @property
    def connected(self) -> bool:
        return self._joined

    def connect(self, timeout_s: float = 10.0) -> None:
        del timeout_s
        self._joined = True

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.bytes_sent += len(payload)
        self._bus._publish(self, topic, payload, retain)

    def subscribe(self, topic_filter: str) -> None:
        self.filters.append(topic_filter)
        self._bus._subscribed(self, topic_filter)

    def poll(self, timeout_s: float = 0.1) -> int:
        """Deliver everything queued on the bus (to every endpoint, in order: one process, one thread)."""
        del timeout_s
        return self._bus.drain()

    def flush(self, timeout_s: float = 5.0) -> None:
        del timeout_s  # a publish is on the bus at once

    def close(self) -> None:
        self._joined = False
