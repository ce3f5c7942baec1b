"""The MQTT transport: the only module that imports paho.

Both sides use this one wrapper (the transport seam lives in ``protocol``).
paho runs its network loop in a thread of its own; messages are put on a
queue there and handed to the handler by :meth:`MqttTransport.poll` in the
caller's thread, so the coordinator and the agent stay single-threaded.

paho quirks handled here:

* ``Client`` needs ``CallbackAPIVersion.VERSION2`` or it warns (VERSION1 is
  deprecated) and passes different callback arguments for MQTT 3 and 5.
* ``connect`` returns before the CONNACK: we wait for ``on_connect`` and turn a
  refusal (bad credentials, not authorised) into :class:`TransportError`.
* After an automatic reconnect the broker may have dropped the session (clean
  start, expired), so every subscription is renewed in ``on_connect``.
* ``publish`` while disconnected queues the message in paho; it is sent after
  the reconnect (QoS 1), so a short outage loses nothing.
* paho acknowledges a QoS 1 message as soon as it is read, before we handle it: the inbox is bounded
  (messages and bytes) so that a flood cannot grow it without limit; what does not fit is dropped and
  counted (``dropped``), and the sender's at-least-once re-send brings what mattered back.
* A broker *list* (a cluster's nodes): paho reconnects to one host only, and its ``host`` setter refuses
  while a lost connection is being retried; we point its private ``_host``/``_port`` (paho 2.x, pinned
  below 3) at the next node when the connection drops or a reconnect fails, so the same backoff, the same
  client id and the same persistent session move to a node that is up. The first two passes over the nodes
  after a loss wait only the minimum delay (we reset paho's private ``_reconnect_delay``); from then on
  paho's doubling applies as for a single broker.
* MQTT 3.1.1 (for amqtt and NATS, which have no MQTT 5) takes ``clean_session`` in the
  constructor instead of ``clean_start`` at connect, has no session expiry and
  no "no local" subscriptions: a client then also receives what it published.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import random
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ._errors import BrokerRefused, ConfigError, TransportError
from ._transport import Transport

__all__ = ["BrokerAddress", "MqttTransport", "Will", "parse_brokers", "rotated"]

log = logging.getLogger("genfl.mqtt")

REFUSED_RETRY_S = 300.0  # seconds between tries while the broker refuses a login it took before
TAKEN_OVER_WAIT_S = 60  # seconds before reconnecting after another client took our session
RESUBSCRIBE_FIRST_S, RESUBSCRIBE_MAX_S = 5.0, 300.0  # asking again for a refused subscription
QUICK_DROP_S = 5.0  # a connection the broker closes sooner than this after accepting it: a fight over the client id?

# QoS 1, and never our own publishes back (MQTT v5 "no local"), as the in-memory bus does.
_SUBSCRIBE = SubscribeOptions(qos=1, noLocal=True)


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False
    v5: bool = True  # MQTT 5; False for a broker that speaks only 3.1.1 (amqtt)

    @classmethod
    def parse(cls, url: str) -> BrokerAddress:
        """``mqtt://host[:1883]`` or ``mqtts://host[:8883]``; ``?version=3.1.1`` for a 3.1.1-only broker."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError(f"broker URL must look like mqtt://HOST:PORT or mqtts://HOST:PORT, got {url!r}")
        if parts.query not in ("", "version=5", "version=3.1.1"):
            raise ConfigError(f"broker URL query must be version=5 or version=3.1.1, got {parts.query!r}")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise ConfigError(f"bad port in broker URL {url!r}") from exc
        return cls(parts.hostname, port, tls, v5=parts.query != "version=3.1.1")

    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}{'' if self.v5 else '?version=3.1.1'}"


def parse_brokers(text: str) -> tuple[BrokerAddress, ...]:
    """One broker URL, or a cluster's nodes as comma-separated URLs (tried in order, failed over in turn).

    Every node must speak the same: all ``mqtt://`` or all ``mqtts://``, all MQTT 5 or all 3.1.1.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("broker: give at least one URL, mqtt://HOST:PORT")
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts:
        raise ConfigError(f"broker: no URL in {text[:200]!r}")
    if len(parts) > 64:
        raise ConfigError(f"broker: {len(parts)} nodes listed; at most 64")
    addresses = tuple(BrokerAddress.parse(part) for part in parts)
    if len(set(addresses)) != len(addresses):
        raise ConfigError(f"broker: a node is listed twice in {text!r}")
    _check_one_kind(addresses)
    return addresses


def _check_one_kind(addresses: Sequence[BrokerAddress]) -> None:
    """A client speaks one way to all nodes: the same scheme and MQTT version for each."""
    if len({(a.tls, a.v5) for a in addresses}) > 1:
        listed = ",".join(a.url() for a in addresses)
        raise ConfigError(f"broker: the nodes of {listed!r} mix mqtt:// and mqtts:// or MQTT versions; list one kind")


def rotated(brokers: str, shift: int) -> str:
    """The same node list starting at node ``shift`` (mod its length): spreads clients over a cluster."""
    addresses = parse_brokers(brokers)
    start = shift % len(addresses)
    return ",".join(a.url() for a in addresses[start:] + addresses[:start])


@dataclass(frozen=True)
class Will:
    """The message the broker publishes for us if we vanish."""

    topic: str
    payload: bytes
    retain: bool = True


def _paho_client(
    address: BrokerAddress,
    client_id: str,
    max_inflight: int,
    username: str | None,
    password: str | None,
    ca_file: Path | None,
    will: Will | None,
) -> paho.Client:
    """A paho client for ``address``'s kind: MQTT 5 (or 3.1.1 with a persistent session), its login, its TLS
    (pinned to ``ca_file``) and its will."""
    if address.v5:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
    else:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311,
                             clean_session=False)  # fmt: skip
    client.max_inflight_messages_set(max_inflight)
    if username is not None:
        client.username_pw_set(username, password)
    if address.tls:
        # The broker's certificate must chain to ``ca_file`` (the fleet's pinned CA) or, without
        # one, to the system's CAs; its name must match the host. Nothing weaker is offered.
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca_file) if ca_file else None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        client.tls_set_context(context)
    elif ca_file is not None:
        raise ConfigError("a CA file was given for a plain mqtt:// broker URL; use mqtts://")
    if will is not None:
        client.will_set(will.topic, will.payload, qos=1, retain=will.retain)
    return client


class MqttTransport(Transport):
    def __init__(
        self,
        address: BrokerAddress | Sequence[BrokerAddress],
        client_id: str,
        *,
        will: Will | None = None,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
        session_expiry_s: int = 3600,
        keepalive_s: int = 30,
        max_inflight: int = 64,
        backoff_cap_s: float = 30.0,
        refused_retry_s: float = REFUSED_RETRY_S,
        inbox_messages: int = 20_000,
        inbox_bytes: int = 512 * 1024 * 1024,
    ) -> None:
        super().__init__()
        self.addresses: tuple[BrokerAddress, ...] = (address,) if isinstance(address, BrokerAddress) else tuple(address)
        if not self.addresses:
            raise ConfigError("no broker address given")
        _check_one_kind(self.addresses)
        address = self.addresses[0]
        self._node = 0  # index of the node in use (or being tried)
        self.failovers = 0  # times the client moved to another node
        self._tries_since_connected = 0  # nodes tried since the last CONNACK
        self.client_id = client_id
        self._session_expiry_s = session_expiry_s
        self._keepalive_s = keepalive_s
        self._filters: list[str] = []
        self._inbox: queue.SimpleQueue[tuple[str, bytes]] = queue.SimpleQueue()
        self._inbox_limits = (inbox_messages, inbox_bytes)
        self._inbox_held = [0, 0]  # messages, bytes waiting for poll(); under self._lock
        self.dropped = 0  # messages dropped because the inbox was full
        self._connected = threading.Event()
        self._refused: str | None = None
        self._dropped = False  # closed without a CONNACK (not a login refusal)
        self._lock = threading.Lock()
        # SUBSCRIBE packet id -> filter until its SUBACK, and SUBACKs that came before their id was noted (the
        # reason, "" for granted); under _sub_lock, which is never held while paho is called (paho calls back
        # holding locks of its own)
        self._subscribing: dict[int, str] = {}
        self._early_subacks: dict[int, str] = {}
        self._sub_lock = threading.Lock()
        self.refused_filters: dict[str, str] = {}  # filter -> the broker's reason, for each SUBSCRIBE it refused
        self._resubscribe_at, self._resubscribe_every_s = math.inf, RESUBSCRIBE_FIRST_S
        self.refused_topics: dict[str, str] = {}  # topic -> the broker's reason, for each PUBLISH it refused (MQTT 5)
        self._last_publish: paho.MQTTMessageInfo | None = None
        self._client = _paho_client(address, client_id, max_inflight, username, password, ca_file, will)
        self._set_reconnect_policy(backoff_cap_s, refused_retry_s)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._client.on_publish = self._on_publish

    def _set_reconnect_policy(self, backoff_cap_s: float, refused_retry_s: float) -> None:
        """The one reconnect policy: paho's own loop, its delay doubling up to the cap from a random base per
        client (the jitter that keeps a fleet from reconnecting in lockstep after a broker restart; paho takes
        whole seconds), and the slower retry after a refused login or a session taken over."""
        self._backoff_cap_s = backoff_cap_s
        self._reconnect_delays = (random.randint(1, 3), max(3, round(backoff_cap_s)))
        self._client.reconnect_delay_set(*self._reconnect_delays)
        self._refused_retry_s = max(1, round(refused_retry_s))
        self.taken_over = 0  # times another client took this client id's session
        self._taken_back_off = False
        self._connected_at = 0.0  # when the broker last accepted us (monotonic)
        self._quick_drops = 0  # drops in a row, each within QUICK_DROP_S of connecting
        self._connects = 0
        self._reconnected = threading.Event()

    @property
    def address(self) -> BrokerAddress:
        """The node in use (or, while disconnected, the next one to be tried)."""
        return self.addresses[self._node]

    @property
    def node(self) -> str:
        """The URL of the node in use, for status output."""
        return self.address.url()

    def _next_node(self) -> None:
        """Point paho's reconnect at the next node of the list (a no-op for one broker)."""
        if len(self.addresses) == 1:
            return
        self._node = (self._node + 1) % len(self.addresses)
        self.failovers += 1
        self._tries_since_connected += 1
        if self._tries_since_connected < 2 * len(self.addresses):
            # The first two passes over the nodes wait only the (jittered) minimum delay: a cluster that lost a
            # node serves sessions again once it has elected new stream leaders (NATS: 4-9 s), and a node that
            # cannot serve one yet turns us away after a timeout of its own. Then paho doubles the delay.
            with self._client._reconnect_delay_mutex:
                self._client._reconnect_delay = None
        # paho's ``host`` setter refuses while the lost connection is being retried (see the module notes).
        self._client._host = self.address.host
        self._client._port = self.address.port
        log.info("%s: trying the next broker node %s", self.client_id, self.address.url())

    # -- paho callbacks (paho's thread) -----------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            if self._connects > 0 and self._refused != str(reason_code):
                # Taken before, refused now: revoked, or the password changed. Retrying at paho's pace would
                # knock on the broker every few seconds forever; try now and then, and say why.
                log.warning(
                    "the broker %s refused %s (%s): not authorised (revoked, or its password changed); "
                    "trying again every %d s",
                    self.address.url(), self.client_id, reason_code, self._refused_retry_s,
                )  # fmt: skip
                self._client.reconnect_delay_set(self._refused_retry_s, self._refused_retry_s)
            self._refused = str(reason_code)
            self._connected.set()  # wake connect(), which raises
            return
        if (self._refused is not None or self._taken_back_off) and self._connects > 0:
            log.info("the broker %s takes %s again", self.address.url(), self.client_id)
            self._client.reconnect_delay_set(*self._reconnect_delays)
            self._taken_back_off = False
        with self._lock:
            filters = list(self._filters)
        for topic_filter in filters:
            self._subscribe(topic_filter)
        self._refused = None
        self._connected_at = time.monotonic()
        self._connects += 1
        self._tries_since_connected = 0
        if self._connects > 1:
            self._reconnected.set()
        self._connected.set()
        log.info("connected to %s as %s", self.address.url(), self.client_id)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if self._connects == 0 and not self._connected.is_set():
            # Dropped before any CONNACK (a TLS listener hung up on plain MQTT, or the broker refused
            # us without a reason code): wake connect(), which reports it.
            self._refused = f"the connection was closed before the broker accepted it ({reason_code})"
            self._dropped = True
            self._connected.set()
            return
        self._connected.clear()
        lasted = time.monotonic() - self._connected_at
        self._quick_drops = self._quick_drops + 1 if reason_code != 0 and lasted < QUICK_DROP_S else 0
        if str(reason_code) == "Session taken over" or self._quick_drops >= 3:
            # Another client connected with our client id (our identity; a broker that makes the user name the
            # client id). MQTT 5 says so (0x8E); Mosquitto 2.0 just closes the connection, again each time we take
            # the session back. Reconnecting at once would fight it every few seconds: yield for a while.
            self.taken_over += 1
            self._quick_drops = 0
            log.error(
                "%s: another client took the session of %s (%s, %s): is a second process using this identity? "
                "Reconnecting in %d s",
                self.address.url(), self.client_id, reason_code,
                "the broker said so" if str(reason_code) == "Session taken over"
                else f"dropped 3 times in a row, each within {QUICK_DROP_S:.0f} s of connecting",
                TAKEN_OVER_WAIT_S,
            )  # fmt: skip
            self._client.reconnect_delay_set(TAKEN_OVER_WAIT_S, TAKEN_OVER_WAIT_S)
            self._taken_back_off = True
            return
        if reason_code != 0:
            if self._refused is None:  # a refusal was reported once, in _on_connect
                log.warning("lost the broker %s (%s); paho reconnects", self.address.url(), reason_code)
            self._next_node()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # type: ignore[no-untyped-def]
        refusals = [code for code in reason_codes if code.is_failure]
        reason = str(refusals[0]) if refusals else ""
        with self._sub_lock:
            topic_filter = self._subscribing.pop(mid, None)
            if topic_filter is None:
                self._early_subacks[mid] = reason
                return
        self._subscription_answered(topic_filter, reason)

    def _subscription_answered(self, topic_filter: str, reason: str) -> None:
        if reason:
            self._subscription_refused(topic_filter, reason)
        elif self.refused_filters.pop(topic_filter, None) is not None:
            log.info("the broker %s took %s's subscription to %s at last", self.address.url(), self.client_id,
                     topic_filter)  # fmt: skip

    def _subscription_refused(self, topic_filter: str, reason: str) -> None:
        # The broker's ACL does not let this login read the filter (0x87 Not authorized for MQTT 5, 0x80 for
        # 3.1.1): nothing will ever arrive on it, so say so once instead of waiting in silence. A cluster also
        # refuses one it could not set up in time (NATS: its JetStream consumer, during a config reload), so a
        # refused filter is asked for again, less and less often (poll).
        if topic_filter not in self.refused_filters:
            log.error("the broker %s refused %s's subscription to %s (%s)", self.address.url(), self.client_id,
                      topic_filter, reason)  # fmt: skip
        self.refused_filters[topic_filter] = reason
        with self._sub_lock:
            self._resubscribe_at = min(self._resubscribe_at, time.monotonic() + self._resubscribe_every_s)
            self._resubscribe_every_s = min(2 * self._resubscribe_every_s, RESUBSCRIBE_MAX_S)

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if not reason_code.is_failure:
            return
        # Mosquitto answers an MQTT 5 PUBLISH its ACL denies with 0x87 Not authorized (3.1.1 has no way to say
        # so). paho calls this holding its lock of the messages in flight, this one still among them.
        message = client._out_messages.get(mid)
        topic = message.topic if message is not None else f"message {mid}"
        self.refused_topics[topic] = str(reason_code)
        log.error("the broker %s refused %s's message on %s (%s)", self.address.url(), self.client_id, topic,
                  reason_code)  # fmt: skip

    def _on_connect_fail(self, client, userdata) -> None:  # type: ignore[no-untyped-def]
        self._next_node()

    def _on_message(self, client, userdata, message) -> None:  # type: ignore[no-untyped-def]
        payload = bytes(message.payload)
        with self._lock:
            full = (self._inbox_held[0] >= self._inbox_limits[0]
                    or self._inbox_held[1] + len(payload) > self._inbox_limits[1])  # fmt: skip
            if not full:
                self._inbox_held[0] += 1
                self._inbox_held[1] += len(payload)
            else:
                self.dropped += 1
        if full:
            if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                log.warning("inbox full: dropped %d messages so far (last on %s)", self.dropped, message.topic[:120])
            return
        self._inbox.put((message.topic, payload))

    def _taken(self, payload: bytes) -> None:
        with self._lock:
            self._inbox_held[0] -= 1
            self._inbox_held[1] -= len(payload)

    # -- Transport ---------------------------------------------------------------------------

    def _open(self, address: BrokerAddress) -> None:
        """Open the connection to one node (the CONNACK arrives later, in paho's thread)."""
        try:
            if address.v5:
                properties = Properties(PacketTypes.CONNECT)
                properties.SessionExpiryInterval = self._session_expiry_s
                self._client.connect(
                    address.host, address.port, keepalive=self._keepalive_s, clean_start=False, properties=properties
                )
            else:
                self._client.connect(address.host, address.port, keepalive=self._keepalive_s)
        except ssl.SSLCertVerificationError as exc:
            raise TransportError(
                f"the broker at {address.url()} presented a certificate that does not verify against "
                f"the pinned CA: {exc.verify_message}"
            ) from exc
        except OSError as exc:  # ssl.SSLError included
            raise TransportError(f"cannot reach the broker at {address.url()}: {exc}") from exc

    def connect(self, timeout_s: float = 10.0) -> None:
        """Connect (persistent session) to the first node that answers and start paho's network thread."""
        unreachable: list[str] = []
        for _ in range(len(self.addresses)):
            try:
                self._open(self.address)
                break
            except TransportError as exc:
                if len(self.addresses) == 1 or isinstance(exc.__cause__, ssl.SSLCertVerificationError):
                    raise
                unreachable.append(str(exc))
                self._node = (self._node + 1) % len(self.addresses)
        else:
            raise TransportError("cannot reach any broker node: " + "; ".join(unreachable))
        self._client.loop_start()
        if not self._connected.wait(timeout_s):
            self.close()
            raise TransportError(f"no answer from the broker at {self.address.url()} within {timeout_s:.0f} s")
        if self._refused is not None:
            reason = self._refused
            self.close()
            if self._dropped:
                raise TransportError(f"the broker at {self.address.url()} dropped {self.client_id}: {reason}")
            raise BrokerRefused(f"the broker at {self.address.url()} refused {self.client_id}: {reason}")

    def connect_patiently(
        self,
        stop: threading.Event,
        *,
        timeout_s: float = 10.0,
        attempts: int | None = None,
        waiting: Callable[[str, float, bool], None] | None = None,
        tick: Callable[[], None] | None = None,
    ) -> bool:
        """:meth:`connect`, tried again until it works, ``stop`` is set or ``attempts`` ran out; False if it never
        did. The first connection's retry policy, as paho's own is for the ones after it: a capped exponential
        backoff with jitter, and the slow pace of a refused login (revoked, a wrong password: asking often will
        not help). ``waiting(why, seconds, refused)`` hears each wait, ``tick`` runs at least once a second."""
        delay = 1.0
        tried = 0
        while not stop.is_set() and (attempts is None or tried < attempts):
            tried += 1
            try:
                self.connect(timeout_s=timeout_s)
                return True
            except BrokerRefused as exc:
                why, wait, refused = str(exc), self._refused_retry_s * random.uniform(0.8, 1.0), True
            except TransportError as exc:
                why, wait, refused = str(exc), min(self._backoff_cap_s, delay) * random.uniform(0.5, 1.0), False
            if waiting is not None:
                waiting(why, wait, refused)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and not stop.is_set():
                if tick is not None:
                    tick()
                stop.wait(min(1.0, max(0.0, deadline - time.monotonic())))
            delay *= 2
        return False

    @property
    def connected(self) -> bool:
        return self._connected.is_set() and self._refused is None

    @property
    def refused(self) -> str | None:
        """The broker's reason for refusing the last (re)connection, while it refuses; None otherwise."""
        return self._refused

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.bytes_sent += len(payload)
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        self._last_publish = info
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):  # NO_CONN: queued for the reconnect
            raise TransportError(f"publish to {topic} failed: {paho.error_string(info.rc)}")

    def subscribe(self, topic_filter: str) -> None:
        with self._lock:
            self._filters.append(topic_filter)
        if self._connected.is_set():
            self._subscribe(topic_filter)

    @property
    def subscriptions_settled(self) -> bool:
        """Whether the broker answered every subscription sent (a cluster may take seconds to make the first one
        of a persistent session: it sets up replicated streams for it)."""
        with self._sub_lock:
            return not self._subscribing

    def _subscribe(self, topic_filter: str) -> None:
        if self.address.v5:
            _, mid = self._client.subscribe(topic_filter, options=_SUBSCRIBE)
        else:
            _, mid = self._client.subscribe(topic_filter, qos=1)
        if mid is None:
            return
        with self._sub_lock:
            reason = self._early_subacks.pop(mid, None)
            if reason is None:
                self._subscribing[mid] = topic_filter
        if reason is not None:  # answered before we noted it
            self._subscription_answered(topic_filter, reason)

    def poll(self, timeout_s: float = 0.1) -> int:
        """Hand queued messages to the handler in this thread; waits up to ``timeout_s`` for the first."""
        delivered = 0
        if self._reconnected.is_set():
            self._reconnected.clear()
            if self._reconnect_handler is not None:
                self._reconnect_handler()
        if self.refused_filters and time.monotonic() >= self._resubscribe_at and self._connected.is_set():
            with self._sub_lock:
                self._resubscribe_at = math.inf
            for topic_filter in list(self.refused_filters):
                self._subscribe(topic_filter)
        try:
            topic, payload = self._inbox.get(timeout=timeout_s)
        except queue.Empty:
            return 0
        while True:
            self._taken(payload)
            self._deliver(topic, payload)
            delivered += 1
            try:
                topic, payload = self._inbox.get_nowait()
            except queue.Empty:
                return delivered

    def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until the broker acknowledged everything published so far (or ``timeout_s`` passed)."""
        last = self._last_publish
        if last is not None and self._connected.is_set():
            # In order: the last one acknowledged means all were. If the connection went away
            # meanwhile paho raises; there is nothing more to flush then.
            with contextlib.suppress(RuntimeError, ValueError):
                last.wait_for_publish(timeout_s)

    def close(self, flush_timeout_s: float = 5.0) -> None:
        """Send what is queued, disconnect cleanly (no will) and stop the network thread."""
        self.flush(flush_timeout_s)
        self._client.disconnect()
        self._client.loop_stop()
        self._connected.clear()
