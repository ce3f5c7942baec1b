"""The agent daemon behind ``genfl-edge run``: keeps the broker session, never imports torch.

State directory layout::

    STATE_DIR/blobs/                global models (content-addressed), partial chunks
    STATE_DIR/work/                 the worker's task, model and update files
    STATE_DIR/pending-update.bin    a finished update until the server acknowledges it
    STATE_DIR/status.json           what ``genfl-edge status`` shows, rewritten every few seconds
    STATE_DIR/fleet-classes.json    the fleet's class list, as the last task named it
    STATE_DIR/last-round            the latest round this board took a task for (its state message says it)

Signals: the first SIGTERM (or SIGINT) stops taking tasks, lets a running
worker finish within ``stop_grace`` (its update is sent, and kept on disk
until acknowledged), publishes the offline state and exits 0. A second signal
stops the worker at once. Every file write is temp-file + rename.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import FrameType
from typing import Any

from protocol import (
    PROGRESS_EVERY_S,
    BlobStore,
    ConfigError,
    DataError,
    DeviceState,
    FrameGuard,
    GenflError,
    ModelError,
    MqttTransport,
    Notifier,
    OpenGuard,
    SignedGuard,
    Topics,
    Will,
    atomic_write,
    class_mapping,
    encode_message,
    load_signing_key,
    parse_brokers,
    parse_classes,
    public_key_from_text,
    setting,
    validate_classes,
    validate_name,
)

from ._agent import AgentCore
from ._deployment import ModelDeployment
from ._gate import GatedRunner, TrainWindow
from ._policy import TaskPolicy
from ._privacy import released_label_counts, released_sample_count, scaled_to_total
from ._process_runner import WorkerRunner, describe_data
from ._release_taker import ReleaseTaker

__all__ = ["AgentConfig", "load_agent_config", "run_agent"]

log = logging.getLogger("genfl.edge")

KEPT_BLOBS = 3  # at start: the last round's model, the one before, a synthetic batch


@dataclass(frozen=True)
class AgentConfig:
    device_id: str = setting(help="This device's id.")
    data: str = setting(help="digits, cifar10, folder:PATH, zip:PATH or npz:PATH.")
    state_dir: Path = setting(help="Models, the pending update, status.json.")
    fleet: str = setting("default", "Fleet name (topic prefix genfl/<fleet>/).")
    broker: str = setting(
        "mqtt://127.0.0.1:1883", "Broker URL, mqtt://HOST:PORT; a cluster: its nodes, comma-separated."
    )
    data_dir: Path = setting(Path("data"), "Where cifar10 is (or is downloaded to).")
    worker: str = setting("per-task", "per-task (frees memory), persistent, or pool (a shared training pool).")
    pool_socket: Path | None = setting(None, "With --worker pool: the socket of `python -m simulation.pool`.")
    torch_device: str = setting("cpu", "Where the worker trains: cpu or cuda.")
    share_label_counts: bool = setting(False, "Send the label histogram.")
    label_noise: float | None = setting(
        None, "Share the label counts with Laplace noise (epsilon-DP); implies sharing.", metavar="EPSILON"
    )
    backoff_cap: float = setting(60.0, "Longest wait between reconnects, seconds.")
    status_interval: float = setting(5.0, "Seconds between status.json rewrites.")
    stop_grace: float = setting(30.0, "Seconds a running training may finish on stop.")
    train_window: str | None = setting(None, "Train only in this local window, e.g. 22:00-06:00.")
    min_free_memory: float = setting(0.0, "MB that must be free to start a worker.")
    resend_after: float = setting(60.0, "Re-send an unacknowledged update after N s.")
    state_refresh: float = setting(60.0, "Say 'online' again every N s while connected (0: only on connect).")
    progress_every: float = setting(PROGRESS_EVERY_S, "Seconds between 'still training' words to the server (0: none).")
    # What this device agrees to train (see edge_agent._policy): tasks outside it are refused.
    min_batch_size: int = setting(TaskPolicy.min_batch_size, "Refuse tasks with smaller batches.")
    min_local_steps: int = setting(
        TaskPolicy.min_local_steps, "Refuse tasks with fewer optimizer steps over the local data."
    )
    allowed_codecs: tuple[str, ...] = setting(
        TaskPolicy.allowed_codecs,
        "Comma-separated update codecs this device accepts, e.g. int8,int4.",
        parse=lambda text: tuple(text.split(",")),
    )
    require_qat: bool = setting(
        TaskPolicy.require_qat, "Refuse tasks that train in float.", flag="--require-qat/--allow-float"
    )
    require_secure_aggregation: bool = setting(
        TaskPolicy.require_secure_aggregation, "Refuse tasks whose update would reach the server in the clear."
    )
    min_noise_multiplier: float | None = setting(
        None, "Refuse tasks without differential privacy at least this strong (a noise multiplier).", metavar="Z"
    )
    sample_count_noise: float | None = setting(None, "Report the sample count with Laplace noise.", metavar="EPSILON")
    release_margin: float = setting(
        0.02, "Deploy a model release unless it scores this much below the deployed one on the board's held-out data."
    )
    # The fleet's class names in the model's order (enrollment writes them; every task carries them too): the
    # board numbers its folders by them and shares label counts in their order.
    classes: tuple[str, ...] | None = setting(
        None,
        "The fleet's class names, comma-separated (enroll writes them; every task names them).",
        parse=parse_classes,
    )
    # A secured fleet (written by `genfl-edge enroll`): broker login, the CA the broker's certificate must
    # chain to, this board's signing key and the server's pinned public key.
    username: str | None = setting(None, cli=False)
    password: str | None = field(default=None, repr=False, metadata={"cli": False})  # never printed
    ca_file: Path | None = setting(None, cli=False)
    device_key: Path | None = setting(None, cli=False)
    server_public_key: str | None = setting(None, cli=False)

    def __post_init__(self) -> None:
        validate_name("device id", self.device_id)
        validate_name("fleet", self.fleet)
        parse_brokers(self.broker)
        if not self.state_refresh >= 0:
            raise ConfigError(f"state refresh must be 0 or more seconds, got {self.state_refresh}")
        if not self.progress_every >= 0:
            raise ConfigError(f"progress_every must be 0 or more seconds, got {self.progress_every}")
        if self.worker not in ("per-task", "persistent", "pool"):
            raise ConfigError(f"worker must be per-task, persistent or pool, got {self.worker!r}")
        if (self.worker == "pool") != (self.pool_socket is not None):
            raise ConfigError("--worker pool goes with --pool-socket PATH (and --pool-socket only with it)")
        if self.backoff_cap < 1:
            raise ConfigError("the backoff cap must be at least 1 s")
        if self.label_noise is not None and not (isinstance(self.label_noise, (int, float)) and self.label_noise > 0):
            raise ConfigError(f"label noise epsilon must be a positive number, got {self.label_noise!r}")
        if self.stop_grace < 0 or self.min_free_memory < 0:
            raise ConfigError("stop grace and minimum free memory cannot be negative")
        if self.train_window is not None:
            TrainWindow.parse(self.train_window)
        self.policy()
        if self.sample_count_noise is not None and not (
            isinstance(self.sample_count_noise, (int, float)) and self.sample_count_noise > 0
        ):
            raise ConfigError(f"sample count noise epsilon must be a positive number, got {self.sample_count_noise!r}")
        if (self.device_key is None) != (self.server_public_key is None):
            raise ConfigError("device_key and server_public_key go together (both come from `genfl-edge enroll`)")
        if self.server_public_key is not None:
            public_key_from_text(self.server_public_key)
        if self.classes is not None:
            validate_classes(self.classes)

    def policy(self) -> TaskPolicy:
        return TaskPolicy(self.min_batch_size, self.min_local_steps, tuple(self.allowed_codecs), self.require_qat,
                          self.require_secure_aggregation, self.min_noise_multiplier)  # fmt: skip

    def redacted(self) -> dict[str, Any]:
        """The settings with the password hidden: what may be written to status files and logs."""
        values = asdict(self)
        if values.get("password") is not None:
            values["password"] = "(set)"
        return values

    def guard(self) -> FrameGuard:
        if self.device_key is None or self.server_public_key is None:
            return OpenGuard()
        server_key = public_key_from_text(self.server_public_key)
        return SignedGuard(self.fleet, load_signing_key(self.device_key), lambda sender: server_key)


def agent_config_text(settings: Mapping[str, object], comment: str = "") -> str:
    """The TOML that :func:`load_agent_config` reads back: an ``[agent]`` table of strings, numbers, booleans
    and lists of strings (a None is left out: the default)."""

    def value_text(value: object) -> str:
        if isinstance(value, (str, list, tuple)):
            return json.dumps(value, ensure_ascii=False)  # a JSON string or list of strings is a TOML one too
        if isinstance(value, Path):
            return json.dumps(str(value), ensure_ascii=False)
        return str(value).lower() if isinstance(value, bool) else str(value)

    lines = [f"# {comment}"] if comment else []
    lines.append("[agent]")
    lines += [f"{name} = {value_text(value)}" for name, value in settings.items() if value is not None]
    return "\n".join(lines) + "\n"


def load_agent_config(path: Path | None, overrides: dict[str, Any]) -> AgentConfig:
    """Settings from a TOML file (``[agent]`` table or top level), then ``overrides`` (CLI flags) on top."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            document = tomllib.loads(path.read_text())
        except (OSError, ValueError) as exc:  # TOMLDecodeError, UnicodeDecodeError, integers over 4,300 digits
            raise ConfigError(f"{path}: cannot read the config ({str(exc)[:200]})") from exc
        values = document.get("agent", document)
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: [agent] must be a table of settings")
        # a misspelt section ([agnet]) would hold settings, the privacy policy among them, that nothing reads
        outside = sorted(set(document) - {"agent"}) if "agent" in document else []
        sections = sorted(name for name, value in values.items() if isinstance(value, dict))
        if outside or sections:
            raise ConfigError(f"{path}: unknown sections or keys {outside or sections} (the settings go in [agent])")
        values = dict(values)
    known = {f.name: f for f in fields(AgentConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown settings {unknown}; known: {sorted(known)}")
    overrides_given = {k for k, v in overrides.items() if v is not None}
    values.update({k: v for k, v in overrides.items() if v is not None})
    for name in ("device_id", "data", "state_dir"):
        if name not in values:
            raise ConfigError(f"{name.replace('_', '-')} is not set (give --{name.replace('_', '-')} or a config file)")
    try:
        for name in ("state_dir", "data_dir", "ca_file", "device_key", "pool_socket"):
            if name in values:
                values[name] = Path(values[name])
        for name in ("ca_file", "device_key"):  # relative to the config file: it may be a systemd credential
            if path is not None and name in values and not values[name].is_absolute() and name not in overrides_given:
                values[name] = path.parent / values[name]
        if isinstance(values.get("classes"), (list, str)):
            values["classes"] = parse_classes(values["classes"])
        if isinstance(values.get("allowed_codecs"), (list, str)):
            codecs = values["allowed_codecs"]
            values["allowed_codecs"] = tuple(codecs.split(",") if isinstance(codecs, str) else codecs)
        return AgentConfig(**values)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ConfigError(f"bad config: {str(exc)[:200]}") from exc


def _saved_classes(state_dir: Path) -> tuple[str, ...] | None:
    """The fleet's class list the last task named (None if none is kept, or the file is unreadable)."""
    try:
        return validate_classes(json.loads((state_dir / "fleet-classes.json").read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError, GenflError) as exc:
        log.warning("ignoring an unreadable %s (%s)", state_dir / "fleet-classes.json", exc)
        return None


def _rss_mb() -> float:
    """Resident memory now, from /proc (ru_maxrss misreports after the fork of a worker)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _latest_blob(directory: Path) -> str | None:
    """The id of the newest whole model blob this device holds."""
    try:
        blobs = [p for p in directory.iterdir() if p.is_file() and len(p.name) == 64]
    except OSError:
        return None
    return max(blobs, key=lambda p: p.stat().st_mtime).name if blobs else None


class _Stop:
    """First signal: stop gracefully. Second: stop now."""

    def __init__(self, event: threading.Event | None) -> None:
        self.graceful = event or threading.Event()
        self.now = threading.Event()

    def signal(self, signum: int, frame: FrameType | None) -> None:
        if self.graceful.is_set():
            log.warning("second signal %d: stopping now", signum)
            self.now.set()
        else:
            log.info("signal %d: finishing up, then stopping", signum)
            self.graceful.set()


def _connect_patiently(transport: MqttTransport, stop: _Stop, notifier: Notifier) -> bool:
    """The transport's first-connection retries, told to the log and to systemd (status, watchdog)."""
    notifier.status("waiting for broker")

    def waiting(why: str, seconds: float, refused: bool) -> None:
        if refused:
            notifier.status("refused by the broker")
            log.warning("%s: not authorised (revoked, or a wrong password); retrying in %.0f s", why, seconds)
        else:
            log.warning("%s; retrying in %.0f s", why, seconds)

    return transport.connect_patiently(stop.graceful, waiting=waiting, tick=notifier.watchdog)


class _Agent:
    """The daemon's pieces and its loop."""

    def __init__(self, config: AgentConfig, notifier: Notifier, *, describe_in_process: bool = False) -> None:
        self.config = config
        self.notifier = notifier
        config.state_dir.mkdir(parents=True, exist_ok=True)
        summary = describe_data(config.data, config.data_dir, in_process=describe_in_process)
        num_samples = summary.num_samples
        if config.sample_count_noise is not None:
            num_samples = released_sample_count(config.state_dir, summary.num_samples, config.sample_count_noise)
        log.info("device %s: %d local samples in %d classes", config.device_id, summary.num_samples,
                 len(summary.classes))  # fmt: skip
        self.summary, self.num_samples = summary, num_samples
        self._classes_to_keep: tuple[str, ...] | None = None  # the fleet's list, to write down in the next upkeep
        classes, label_counts = self._fleet_classes()
        topics, session = Topics(config.fleet), secrets.token_hex(8)  # this run: its will is state 0, its states 1...
        offline = DeviceState(device_id=config.device_id, state="offline", num_samples=num_samples, session=session,
                              sequence=0)  # fmt: skip
        will_payload = (guard := config.guard()).seal(encode_message(offline))
        self.transport = MqttTransport(
            parse_brokers(config.broker),
            f"genfl-{config.fleet}-{config.device_id}",
            will=Will(topics.device(config.device_id, "state"), will_payload),
            username=config.username,
            password=config.password,
            ca_file=config.ca_file,
            backoff_cap_s=config.backoff_cap,
        )
        self.worker = WorkerRunner(
            config.device_id,
            config.data,
            config.state_dir / "work",
            data_dir=config.data_dir,
            mode=config.worker,
            torch_device=config.torch_device,
            pool_socket=config.pool_socket,
        )
        window = TrainWindow.parse(config.train_window) if config.train_window else None
        self.runner = GatedRunner(self.worker, window, config.min_free_memory)
        store = BlobStore(config.state_dir / "blobs")
        dropped = store.keep_newest(KEPT_BLOBS)  # a board that ran many rounds before this start
        if dropped:
            log.info("removed %d old blobs from %s (keeping the newest %d)", len(dropped), config.state_dir, KEPT_BLOBS)
        self.core = AgentCore(
            config.device_id,
            topics,
            self.transport,
            store,
            self.runner,
            num_samples=num_samples,
            label_counts=label_counts,
            classes=classes,
            recount=self.adopt_classes,
            pending_path=config.state_dir / "pending-update.bin",
            round_path=config.state_dir / "last-round",
            guard=guard,
            policy=config.policy(),
            will_payload=will_payload,
            session=session,
            releases=ReleaseTaker(config.device_id, ModelDeployment(config.state_dir), store, self.score_release,
                                  config.release_margin, self._in_window),
        )  # fmt: skip

    def _fleet_classes(self) -> tuple[tuple[str, ...] | None, tuple[float, ...] | None]:
        """The fleet's class list (the config's; else the one the last task named, if it still fits this board's
        data) and this board's label counts in its order."""
        config = self.config
        if config.classes is not None:
            return config.classes, self.label_counts_for(config.classes)  # a folder the fleet does not know: stop
        classes = _saved_classes(config.state_dir)
        try:
            return classes, None if classes is None else self.label_counts_for(classes)
        except DataError as exc:
            log.warning("dropping the fleet's classes kept in %s: %s", config.state_dir / "fleet-classes.json", exc)
            return None, None

    def label_counts_for(self, classes: tuple[str, ...]) -> tuple[float, ...] | None:
        """This board's label counts in the order of the fleet's ``classes`` (noised over all of them when it
        noises), or None when it does not share them; DataError for a folder the fleet does not know."""
        summary, config = self.summary, self.config
        numbers = class_mapping(summary.classes, classes, f"{config.device_id}'s data ({config.data})")
        if not (config.share_label_counts or config.label_noise is not None):
            return None
        counts = [0] * len(classes)
        for number, count in zip(numbers, summary.label_counts):
            counts[number] += count
        released = released_label_counts(config.state_dir, counts, config.label_noise, classes)
        return scaled_to_total(released, self.num_samples)

    def _in_window(self) -> bool:
        window = self.runner.window
        return window is None or window.contains(dt.datetime.now().time())

    def score_release(self, model: Path) -> float:
        """A release's accuracy on this board's held-out data, by a short-lived worker (onnxruntime, no torch)."""
        classes = self.core.classes or self.summary.classes
        command = [sys.executable, "-m", "edge_agent.worker", "--score", str(model), "--data", self.config.data,
                   "--classes", ",".join(classes), "--data-dir", str(self.config.data_dir)]  # fmt: skip
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ModelError(f"cannot score the release: {exc}") from exc
        if done.returncode != 0:
            raise ModelError(done.stderr.strip().removeprefix("error: ") or "scoring the release failed")
        return float(json.loads(done.stdout)["accuracy"])

    def adopt_classes(self, classes: tuple[str, ...]) -> tuple[float, ...] | None:
        """A task named this fleet class list: the label counts in its order. The list is kept for the next start
        by the loop's upkeep, after the task is answered (an fsync on a busy disk must not delay the answer)."""
        counts = self.label_counts_for(classes)
        self._classes_to_keep = classes
        return counts

    def _keep_classes(self) -> None:
        classes, self._classes_to_keep = self._classes_to_keep, None
        if classes is None:
            return
        try:
            atomic_write(self.config.state_dir / "fleet-classes.json", json.dumps(list(classes)).encode())
        except OSError as exc:  # only a cache for the next start: the round goes on
            log.warning("cannot keep the fleet's classes in %s: %s", self.config.state_dir, exc)

    def state_text(self) -> str:
        if self.transport.refused is not None:
            return f"refused by the broker ({self.transport.refused})"
        if not self.transport.connected:
            return "waiting for broker"
        if self.core.training and self.core.current_task is not None:
            return f"training round {self.core.current_task.round}"
        if self.runner.waiting:
            return "waiting for the train window"
        return "idle"

    def write_status(self, *, stopped: bool = False) -> None:
        core = self.core
        status = {
            "device_id": self.config.device_id,
            "fleet": self.config.fleet,
            "broker": self.config.broker,
            "broker_node": self.transport.node,
            "broker_failovers": self.transport.failovers,
            "signed": self.config.device_key is not None,
            "connected": self.transport.connected,
            "state": "stopped" if stopped else self.state_text(),
            "round": None if core.current_task is None else core.current_task.round,
            "model_id": None if core.current_task is None else core.current_task.model_id,
            "training": core.training,
            "last_outcome": core.last_outcome,
            "pending_round": core.pending_round,
            "last_round": None if core.last_outcome is None else core.last_outcome[0],
            "model_held": _latest_blob(self.config.state_dir / "blobs"),
            "num_samples": core.num_samples,
            "classes": None if core.classes is None else list(core.classes),  # the fleet's, as the board uses them
            "release": None if core.releases is None else core.releases.running,  # the model release it runs
            "release_outcome": None if core.releases is None else core.releases.outcome,
            "rejected": dict(core.rejected),
            "pid": os.getpid(),
            "worker_pid": self.worker.worker_pid,
            "worker_peak_rss_mb": self.worker.worker_peak_rss_mb,
            "daemon_rss_mb": round(_rss_mb(), 1),
            "updated": time.time(),
        }
        path = self.config.state_dir / "status.json"
        atomic_write(path, (json.dumps(status, indent=2) + "\n").encode())

    def upkeep(self) -> None:
        """What the agent does between messages: the worker's news, re-sends, its periodic "online"."""
        self.runner.check()
        now = time.monotonic()
        self.core.resend_pending(now, self.config.resend_after)
        self.core.report_progress(now, self.config.progress_every)
        self._keep_classes()
        self.core.take_deferred_release()
        if self.transport.connected:
            self.core.refresh_state(now, self.config.state_refresh)

    def step(self, timeout_s: float = 0.1) -> None:
        self.transport.poll(timeout_s)
        self.upkeep()
        self.notifier.status(self.state_text())
        self.notifier.watchdog()


def run_agent(config: AgentConfig, stop_event: threading.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or ``stop_event``); returns the process exit code."""
    stop = _Stop(stop_event)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop.signal)
        signal.signal(signal.SIGINT, stop.signal)
    notifier = Notifier()
    (config.state_dir).mkdir(parents=True, exist_ok=True)
    (config.state_dir / "config.json").write_text(json.dumps(config.redacted(), default=str, indent=2) + "\n")
    agent = _Agent(config, notifier)
    agent.worker.warm_up()
    if not _connect_patiently(agent.transport, stop, notifier):
        agent.worker.stop(grace_s=0.0)
        notifier.stopping()
        return 0
    agent.core.start()
    notifier.ready(agent.state_text())
    last_status = 0.0
    try:
        while not stop.graceful.is_set():
            agent.step()
            if time.monotonic() - last_status >= config.status_interval:
                agent.write_status()
                last_status = time.monotonic()
        notifier.stopping()
        agent.core.accepting_tasks = False
        deadline = time.monotonic() + config.stop_grace
        while agent.core.training and not stop.now.is_set() and time.monotonic() < deadline:
            agent.step()  # the worker may finish: its update is sent and kept until acknowledged
        if agent.core.training:
            log.warning(
                "stopping the training worker of round %s", agent.core.current_task and agent.core.current_task.round
            )
        grace_end = time.monotonic() + 1.0
        while agent.core.pending is not None and not stop.now.is_set() and time.monotonic() < grace_end:
            agent.step(0.05)  # a moment for the ack of a just-sent update
    finally:
        agent.worker.stop(grace_s=0.0)
        agent.core.publish_state("offline")
        agent.write_status(stopped=True)
        agent.transport.close()
        notifier.close()
    return 0
