"""The coordinator service behind ``genfl-server serve``: MQTT, SQLite state, resume."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from types import FrameType
from typing import TYPE_CHECKING

import models
from protocol import (
    ConfigError,
    GenflError,
    MqttTransport,
    Notifier,
    ProtocolError,
    TensorDict,
    Transport,
    default_classes,
    describe_classes,
    parse_brokers,
)

from ..broker._broker import EmbeddedBroker
from ..broker._broker_files import SERVER_USER
from ..fleet._security import Enroller, FleetSecurity
from ..learning._strategies import make_strategy
from ..rounds._coordinator import Coordinator, CoordinatorConfig, RoundHooks, RoundResult
from ..rounds._journal import SqliteJournal
from ..rounds._state_lock import holding_state
from ._releases import AutoRelease, ReleaseBook, ReleaseWatcher
from ._serve_config import ServeConfig

if TYPE_CHECKING:
    from ._metrics import FleetMetrics

__all__ = ["ServeConfig", "fleet_classes", "run_server"]

log = logging.getLogger("genfl.server")


def run_server(config: ServeConfig, stop: threading.Event | None = None) -> int:
    """Serve rounds until all are done or SIGTERM/SIGINT; returns the exit code."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():

        def _on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("signal %d: stopping after persisting", signum)
            stop.set()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
    with holding_state(config.state_dir):
        return _serve(config, stop)


def _serve(config: ServeConfig, stop: threading.Event) -> int:
    journal = SqliteJournal(config.state_dir)
    classes = fleet_classes(config, journal.classes())
    strategy = make_strategy(config, model_name=config.model, classes=classes)
    security = FleetSecurity.load(config.state_dir)
    fleet = config.fleet
    if security is not None:
        if config.fleet not in ("default", security.fleet):
            raise ConfigError(f"{config.state_dir} is set up for fleet {security.fleet!r}, not {config.fleet!r}")
        fleet = security.fleet
    with contextlib.ExitStack() as stack:
        if security is not None:
            stack.callback(security.close)
        transport, url = _connect(config, fleet, security, stack)
        metrics = _operator_endpoint(config, fleet, stack)
        book = ReleaseBook(config.state_dir, fleet, None if security is None else security.signing_key)
        auto = _auto_release(config, book)
        coordinator = Coordinator(
            CoordinatorConfig(
                fleet=fleet, model_name=config.model, rounds=config.rounds, min_devices=config.min_devices,
                round_timeout_s=config.round_timeout_s, max_failed_rounds=config.max_failed_rounds or None,
                settle_s=SETTLE_S, accept_older_state=config.accept_older_state, chunk_size=config.chunk_size,
                max_update_norm=config.max_update_norm, classes=classes,
                max_weight_ratio=config.max_weight_ratio or None, task_resend_s=config.task_resend_s or None,
                max_states_per_minute=config.max_states_per_minute,
                secure_aggregation=config.secure_aggregation, secagg_phase_s=config.secagg_phase_s,
                privacy=config.privacy(),
            ),
            strategy,
            transport,
            models.model_state(models.build_model(config.model, seed=config.seed)),
            clock=time.time,  # wall time: a deadline survives a restart
            store=journal.blobs,
            journal=journal,
            guard=None if security is None else security.guard(),
            revoked=None if security is None else security.registry.revoked_ids,
            evaluator=_evaluator(config, classes),
            hooks=_hooks(metrics, auto),
        )  # fmt: skip
        enroller = None
        if security is not None:
            enroller = Enroller(security, transport.publish, transport.flush, classes=classes)
            _serve_enrollment(transport, coordinator, enroller)
        coordinator.start()
        if metrics is not None:
            metrics.start_counting(coordinator)
        log.info(
            "serving fleet %s on %s (state in %s, %s); classes %s",
            fleet, url, config.state_dir, "signed, enrolled devices only" if security else "open fleet",
            describe_classes(classes),
        )  # fmt: skip
        notifier = Notifier()
        stack.callback(notifier.close)
        _loop(coordinator, transport, enroller, metrics, notifier, stop, ReleaseWatcher(book))
        journal.close()  # every accepted update is already committed; an open round resumes next start
        if coordinator.halted is not None:
            raise CoordinatorHalted(coordinator.halted)
        if coordinator.finished:
            log.info("all %d rounds done; model %s", config.rounds, coordinator.global_id[:12])
    return 0


def _connect(
    config: ServeConfig, fleet: str, security: FleetSecurity | None, stack: contextlib.ExitStack
) -> tuple[MqttTransport, str]:
    """The coordinator's connection (and the embedded broker, for an open fleet without --broker), closed with
    ``stack``; and the broker's URL."""
    url = config.broker
    if security is not None:
        url = url or security.url
        _check_fits_broker(config, security.max_packet_size)
        transport = MqttTransport(
            parse_brokers(url),
            SERVER_USER,  # the broker makes every client id its user name: this one is the server's alone
            username=SERVER_USER,
            password=security.server_password,
            ca_file=security.ca_file,
            session_expiry_s=24 * 3600,
        )
    else:
        if url is None:
            broker = stack.enter_context(EmbeddedBroker(port=config.broker_port, kind=config.embedded_broker))
            url = broker.url
            print(f"embedded {broker.kind} broker at {url}", flush=True)
        transport = MqttTransport(parse_brokers(url), f"genfl-{fleet}-server", session_expiry_s=24 * 3600)
    transport.connect()
    stack.callback(transport.close)
    return transport, url


def _operator_endpoint(config: ServeConfig, fleet: str, stack: contextlib.ExitStack) -> FleetMetrics | None:
    """With --metrics-port: the metrics (seeded from the journal) and the dashboard, served until ``stack`` ends."""
    if config.metrics_port is None:
        return None
    from ._dashboard import OperatorServer
    from ._metrics import FleetMetrics

    metrics = FleetMetrics(fleet)
    metrics.seed_from_journal(config.state_dir)
    operator = OperatorServer(metrics, config.state_dir, fleet, host=config.metrics_host, port=config.metrics_port,
                              dashboard=config.dashboard, names=config.metrics_names or ())  # fmt: skip
    operator.start()
    stack.callback(operator.close)
    print(f"metrics at http://{config.metrics_host}:{operator.port}/metrics"
          + (f", dashboard at http://{config.metrics_host}:{operator.port}/" if config.dashboard else ""),
          flush=True)  # fmt: skip
    return metrics


def _auto_release(config: ServeConfig, book: ReleaseBook) -> AutoRelease | None:
    """``--release-every`` / ``--release-when-better``: int8 calibrated on the pool unless told otherwise."""
    if not (config.release_every or config.release_when_better):
        return None
    pool = config.genfl.synthetic_pool
    calibration = config.release_calibration or (None if pool is None else f"folder:{pool}")
    return AutoRelease(book, config.state_dir, config.release_every, config.release_when_better,
                       not config.release_float, calibration)  # fmt: skip


def _hooks(metrics: FleetMetrics | None, auto: AutoRelease | None) -> RoundHooks:
    """What the coordinator tells as rounds go: the metrics, and an automatic release as a round closes."""
    base = RoundHooks() if metrics is None else metrics.hooks()
    if auto is None:
        return base
    told = base.on_round_closed

    def closed(result: RoundResult) -> None:
        if told is not None:
            told(result)
        auto.round_closed(result)

    return replace(base, on_round_closed=closed)


def _loop(
    coordinator: Coordinator,
    transport: MqttTransport,
    enroller: Enroller | None,
    metrics: FleetMetrics | None,
    notifier: Notifier,
    stop: threading.Event,
    releases: ReleaseWatcher,
) -> None:
    """Messages in, clocks ticked, systemd and the metrics told, until the rounds are done or we are stopped."""
    observed = 0.0
    notifier.ready(_state_text(coordinator, transport))
    while not stop.is_set() and not coordinator.finished:
        if transport.taken_over >= TAKEOVERS_BEFORE_STOP:
            raise SessionTaken(
                f"another process took this server's broker session {transport.taken_over} times (client id "
                f"{transport.client_id}): a second serve on this fleet, on another machine or a copy of the "
                "state? This one stops; run one server per fleet"
            )
        transport.poll(0.1)
        coordinator.tick()
        releases.poll(coordinator, time.monotonic())
        if enroller is not None:
            enroller.tick()
        notifier.status(_state_text(coordinator, transport))
        notifier.watchdog()
        if metrics is not None and time.monotonic() - observed >= 0.5:
            observed = time.monotonic()
            metrics.observe(coordinator, bytes_received=transport.bytes_received, bytes_sent=transport.bytes_sent,
                            node=transport.node, failovers=transport.failovers)  # fmt: skip
    notifier.stopping()


SETTLE_S = 1.0  # seconds for the boards' retained states to arrive before a task goes out
TAKEOVERS_BEFORE_STOP = 3  # another process took the coordinator's session this often: stop yielding, stop


class SessionTaken(GenflError):
    """Another process keeps connecting with the coordinator's identity."""


class CoordinatorHalted(GenflError):
    """The coordinator stopped opening rounds: every board failed round after round, or the state is older than
    the fleet."""


def fleet_classes(config: ServeConfig, stored: tuple[str, ...] | None) -> tuple[str, ...]:
    """The fleet's class list: as given, else as the state was started with, else the numbers 0..N-1."""
    if config.classes is not None:
        return config.classes
    return stored if stored is not None else default_classes(models.get_spec(config.model).num_classes)


def _evaluator(config: ServeConfig, classes: tuple[str, ...]) -> Callable[[TensorDict], tuple[float, float]] | None:
    """Score each new global model on ``config.eval_dataset``'s test split, numbered by the fleet's class list
    (None: the server does not)."""
    if config.eval_dataset is None:
        return None
    from edge_agent import check_arrays_fit, in_fleet_order, load_dataset, with_channels

    dataset = load_dataset(config.eval_dataset, config.eval_data_dir)
    spec = models.get_spec(config.model)
    test = in_fleet_order(dataset.test, dataset.classes, classes, f"--eval-dataset {config.eval_dataset}")
    test = with_channels(test, spec.input_shape)
    check_arrays_fit(dataset.name, test, config.model, spec.input_shape, spec.num_classes)
    return models.state_evaluator(config.model, test.images, test.labels)


def _check_fits_broker(config: ServeConfig, max_packet_size: int) -> None:
    """The broker disconnects a client that sends more than its maximum packet: refuse to start if an update of
    this model or a chunk would not fit (a frame adds a header and a signature: 64 KiB is plenty)."""
    spec = models.get_spec(config.model)
    update_bytes = sum(v.nbytes for v in models.model_state(models.build_model(config.model)).values())
    largest = max(update_bytes, config.chunk_size) + 64 * 1024
    if largest > max_packet_size:
        raise ConfigError(
            f"{spec.name} updates ({update_bytes} B) or chunks ({config.chunk_size} B) do not fit the broker's "
            f"maximum packet of {max_packet_size} B: run broker-config with --max-packet-size {largest} or more"
        )


def _serve_enrollment(transport: Transport, coordinator: Coordinator, enroller: Enroller) -> None:
    """Route the enrollment topics to the enroller, everything else to the coordinator."""

    def route(topic: str, payload: bytes) -> None:
        if not enroller.handles(topic):
            coordinator.on_message(topic, payload)
            return
        try:
            enroller.on_message(topic, payload)
        except ProtocolError as exc:
            coordinator.count_rejected(f"enroll-{exc.reason}")
            log.warning("rejected an enrollment message on %s: %s", topic[:120], exc.reason)
        except Exception:  # never let one enrollment message end the server
            coordinator.count_rejected("enroll-internal-error")
            log.exception("dropped an enrollment message on %s after an unexpected error", topic[:120])

    transport.set_handler(route)
    transport.subscribe(enroller.subscription)


def _state_text(coordinator: Coordinator, transport: MqttTransport) -> str:
    """The systemd status line: the round's progress, and the broker node when there are several."""
    progress = coordinator.round_progress()
    if progress is None:
        text = f"waiting for devices ({len(coordinator.online_devices())} online)"
    else:
        number, answered, picked = progress
        text = f"round {number}: {answered}/{picked} answered"
    return text if len(transport.addresses) == 1 else f"{text}; broker node {transport.node}"
