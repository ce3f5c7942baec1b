"""The agent daemon behind ``genfl-edge run``: keeps the broker session, never imports torch.

State directory layout::

    STATE_DIR/blobs/                global models (content-addressed), partial chunks
    STATE_DIR/work/                 the worker's task, model and update files
    STATE_DIR/pending-update.bin    a finished update until the server acknowledges it
    STATE_DIR/status.json           what ``genfl-edge status`` shows, rewritten every few seconds
"""

from __future__ import annotations

import json
import logging
import os
import random
import resource
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

from protocol import (
    BlobStore,
    BrokerAddress,
    ConfigError,
    DeviceState,
    MqttTransport,
    Topics,
    TransportError,
    Will,
    encode_message,
    validate_name,
)

from ._agent import AgentCore
from ._process_runner import WorkerRunner, describe_data

__all__ = ["AgentConfig", "run_agent"]

log = logging.getLogger("genfl.edge")


@dataclass(frozen=True)
class AgentConfig:
    device_id: str
    fleet: str
    broker: str
    data: str
    state_dir: Path
    data_dir: Path = Path("data")
    worker: str = "per-task"
    torch_device: str = "cpu"
    share_label_counts: bool = False
    backoff_cap_s: float = 60.0
    status_every_s: float = 5.0

    def __post_init__(self) -> None:
        validate_name("device id", self.device_id)
        validate_name("fleet", self.fleet)
        BrokerAddress.parse(self.broker)
        if self.worker not in ("per-task", "persistent"):
            raise ConfigError(f"--worker must be per-task or persistent, got {self.worker!r}")
        if self.backoff_cap_s < 1:
            raise ConfigError("the backoff cap must be at least 1 s")


def _rss_mb() -> float:
    """Resident memory now, from /proc (ru_maxrss misreports after fork+exec of the worker)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _connect_with_backoff(transport: MqttTransport, stop: threading.Event, cap_s: float) -> bool:
    """Try until connected or stopped: capped exponential backoff with jitter, one log line per try."""
    delay = 1.0
    while not stop.is_set():
        try:
            transport.connect(timeout_s=10)
            return True
        except TransportError as exc:
            wait = min(cap_s, delay) * random.uniform(0.5, 1.0)
            log.warning("%s; retrying in %.0f s", exc, wait)
            stop.wait(wait)
            delay *= 2
    return False


def _write_status(config: AgentConfig, core: AgentCore, transport: MqttTransport, runner: WorkerRunner) -> None:
    status = {
        "device_id": config.device_id,
        "fleet": config.fleet,
        "broker": config.broker,
        "connected": transport.connected,
        "round": None if core.current_task is None else core.current_task.round,
        "model_id": None if core.current_task is None else core.current_task.model_id,
        "training": core.training,
        "last_outcome": core.last_outcome,
        "pending_round": core.pending_round,
        "num_samples": core.num_samples,
        "rejected": dict(core.rejected),
        "pid": os.getpid(),
        "worker_pid": runner.worker_pid,
        "daemon_rss_mb": round(_rss_mb(), 1),
        "updated": time.time(),
    }
    path = config.state_dir / "status.json"
    tmp = path.with_name("status.json.tmp")
    tmp.write_text(json.dumps(status, indent=2) + "\n")
    os.replace(tmp, path)


def run_agent(config: AgentConfig, stop: threading.Event | None = None) -> int:
    """Run until SIGTERM/SIGINT (or ``stop``); returns the process exit code."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():

        def _on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("signal %d: stopping", signum)
            stop.set()

        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    (config.state_dir / "config.json").write_text(json.dumps(asdict(config), default=str, indent=2) + "\n")
    summary = describe_data(config.data, config.data_dir)
    log.info("device %s: %d local samples in %d classes", config.device_id, summary.num_samples, len(summary.classes))
    topics = Topics(config.fleet)
    state_topic = topics.device(config.device_id, "state")
    offline = encode_message(DeviceState(device_id=config.device_id, state="offline", num_samples=summary.num_samples))
    transport = MqttTransport(
        BrokerAddress.parse(config.broker), f"genfl-{config.fleet}-{config.device_id}", will=Will(state_topic, offline)
    )
    runner = WorkerRunner(
        config.device_id,
        config.data,
        config.state_dir / "work",
        data_dir=config.data_dir,
        mode=config.worker,
        torch_device=config.torch_device,
    )
    core = AgentCore(
        config.device_id,
        topics,
        transport,
        BlobStore(config.state_dir / "blobs"),
        runner,
        num_samples=summary.num_samples,
        label_counts=tuple(float(c) for c in summary.label_counts) if config.share_label_counts else None,
        pending_path=config.state_dir / "pending-update.bin",
    )
    runner.warm_up()
    if not _connect_with_backoff(transport, stop, config.backoff_cap_s):
        runner.stop()
        return 0
    core.start()
    last_status = 0.0
    try:
        while not stop.is_set():
            transport.poll(0.1)
            runner.check()
            if time.monotonic() - last_status >= config.status_every_s:
                _write_status(config, core, transport, runner)
                last_status = time.monotonic()
    finally:
        runner.stop(grace_s=0.0)
        core.publish_state("offline")
        _write_status(config, core, transport, runner)
        transport.close()
    return 0
