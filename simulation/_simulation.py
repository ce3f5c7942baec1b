"""A whole federation in one process: coordinator + N agents over a transport.

The simulation is the benchmark harness of the toolkit: it partitions a data
set into non-IID device shards, runs real agents and a real coordinator that
talk through the transport seam, and evaluates the global model on the
held-out test split after each round.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

import models
from cloud_server.broker._broker import EmbeddedBroker
from cloud_server.broker._broker_files import SERVER_USER
from cloud_server.fleet._security import FleetSecurity
from cloud_server.learning._strategies import make_strategy
from cloud_server.learning._strategy import derive_seed
from cloud_server.rounds._coordinator import Coordinator, CoordinatorConfig, RoundHooks, RoundResult
from edge_agent import (
    AgentCore,
    DeviceDataset,
    InProcessRunner,
    LabeledArrays,
    agent_config_text,
    check_fits_model,
    laplace_label_counts,
    load_dataset,
    save_npz,
    scaled_to_total,
)
from protocol import (
    BlobStore,
    ConfigError,
    FrameGuard,
    GenflError,
    InMemoryBus,
    MqttTransport,
    TensorDict,
    Topics,
    Transport,
    atomic_write,
    encode_tensors,
    generate_signing_key,
    parse_brokers,
    public_key_text,
    rotated,
    save_signing_key,
)

from ._attacks import attacked_training
from ._config import SimulationConfig
from ._partition import label_histogram, partition_labels

__all__ = [
    "DeviceShards",
    "device_shards",
    "stratified_subset",
    "SimulationConfig",
    "SimulationHooks",
    "SimulationResult",
    "run_simulation",
    "write_outputs",
]


@dataclass(frozen=True)
class SimulationHooks:
    """Callbacks for progress display; all optional."""

    on_round_start: Callable[[int, int], None] | None = None  # (round, devices picked)
    on_update_accepted: Callable[[str], None] | None = None  # (device id)
    on_round_closed: Callable[[RoundResult], None] | None = None


def _json_ready(values: dict[str, object]) -> dict[str, object]:
    return {name: str(value) if isinstance(value, Path) else value for name, value in values.items()}


@dataclass(frozen=True)
class SimulationResult:
    config: SimulationConfig
    model_name: str
    rounds: list[RoundResult]
    final_state: TensorDict
    histogram: np.ndarray  # (devices, classes)
    classes: tuple[str, ...]
    seconds: float
    rejected: dict[str, int] = field(default_factory=dict)  # messages the coordinator refused, by reason

    @property
    def final_accuracy(self) -> float | None:
        return self.rounds[-1].accuracy if self.rounds else None

    def metrics(self) -> dict[str, object]:
        return {
            "config": {
                **{
                    name: str(value) if isinstance(value, Path) else value
                    for name, value in asdict(self.config).items()
                },
                "model": self.model_name,
            },
            "rounds": [asdict(r) for r in self.rounds],
            "final_accuracy": self.final_accuracy,
            "rejected": self.rejected,
            "seconds": self.seconds,
        }


def stratified_subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A seeded, class-stratified subset of ``size`` indices."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    per_class = {int(c): order[labels[order] == c] for c in np.unique(labels)}
    share = size / len(labels)
    picked = [members[: max(1, round(len(members) * share))] for members in per_class.values()]
    return np.sort(np.concatenate(picked))


class _InMemoryFederation:
    """Coordinator and agents in this process, on one in-memory bus."""

    guard: FrameGuard | None = None  # nothing to sign: no message leaves the process
    revoked: Callable[[], set[str]] | None = None

    def __init__(self, shards: list[tuple[str, LabeledArrays]], config: SimulationConfig, classes: tuple[str, ...],
                 torch_device: str) -> None:  # fmt: skip
        self.bus = InMemoryBus()
        self.coordinator_transport: Transport = self.bus.connect()
        topics = Topics(config.fleet)
        self.agents = [
            AgentCore(
                device_id,
                topics,
                self.bus.connect(),
                BlobStore(),
                InProcessRunner(
                    device_id,
                    shard,
                    classes,
                    torch_device=torch_device,
                    train=attacked_training(config.attack, config.seed + index) if index < config.malicious else None,
                ),
                num_samples=len(shard),
                label_counts=shared_label_counts(config, device_id, shard, len(classes)),
                classes=classes,
            )
            for index, (device_id, shard) in enumerate(shards)
        ]

    def start(self) -> None:
        for agent in self.agents:
            agent.start()

    def run(self, coordinator: Coordinator) -> None:
        while not coordinator.finished:
            if self.bus.drain() == 0:
                raise GenflError(f"simulation stalled in round {coordinator.round_number}: nothing to deliver")

    def close(self) -> None:
        pass


def shared_label_counts(
    config: SimulationConfig, device_id: str, shard: LabeledArrays, num_classes: int
) -> tuple[float, ...] | None:
    """What a simulated device shares of its label histogram: nothing, the exact counts, or a noised release."""
    if not config.share_label_counts and config.label_noise is None:
        return None
    counts = shard.label_counts(num_classes)
    if config.label_noise is None:
        return tuple(float(c) for c in counts)
    rng = np.random.default_rng(derive_seed("label-noise", config.seed, device_id))
    return scaled_to_total(laplace_label_counts([int(c) for c in counts], config.label_noise, rng), len(shard))


class _ProcessFederation:
    """The coordinator in this process; each agent a ``genfl-edge run`` process, all over MQTT.

    Each agent gets its own state folder and its shard as an ``npz`` file in a
    temporary run folder (the simulation's stand-in for the data a board
    holds); logs of the agents go to that folder and are shown if a run fails.
    """

    def __init__(self, shards: list[tuple[str, LabeledArrays]], config: SimulationConfig, dataset: DeviceDataset,
                 torch_device: str) -> None:  # fmt: skip
        self.config = config
        self.shards = shards
        self.torch_device = torch_device
        self.dataset = dataset
        self._stack = contextlib.ExitStack()
        self.run_dir = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="genfl-sim-")))
        self.security = None
        if config.state_dir is not None:  # a signed fleet: its broker, its CA, its server login
            self.security = FleetSecurity.load(config.state_dir)
            if self.security is None:
                raise ConfigError(f"{config.state_dir} holds no secured fleet: run broker-config or cluster-config")
            self._stack.callback(self.security.close)
        url = config.broker or (self.security.url if self.security is not None else None)
        if url is None:
            url = self._stack.enter_context(EmbeddedBroker(kind=config.embedded_broker)).url
        self.url = url
        if self.security is None:
            transport = MqttTransport(parse_brokers(url), f"genfl-{config.fleet}-server", session_expiry_s=0)
        else:
            transport = MqttTransport(parse_brokers(url), SERVER_USER, username=SERVER_USER,
                                      password=self.security.server_password, ca_file=self.security.ca_file,
                                      session_expiry_s=0)  # fmt: skip
        transport.connect()
        self._stack.callback(transport.close)
        self.coordinator_transport = transport
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        empty = LabeledArrays(np.empty((0, *self.dataset.input_shape), dtype=np.uint8), np.empty((0,), dtype=np.int64))
        env = {**os.environ, "GENFL_TORCH_THREADS": str(self.config.torch_threads)}
        pool_socket = self.run_dir / "pool.sock"
        if self.config.worker == "pool":
            # One process imports torch; every agent's training runs in a fork of it.
            slots = self.config.worker_slots or (os.cpu_count() or 1)
            log_file = self._stack.enter_context(open(self.run_dir / "pool.log", "wb"))  # noqa: SIM115
            command = [sys.executable, "-m", "simulation.pool", "--socket", str(pool_socket), "--slots", str(slots)]
            pool = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env)
            self.processes.append(pool)
            deadline = time.monotonic() + 120
            while not pool_socket.exists():
                if pool.poll() is not None or time.monotonic() > deadline:
                    raise GenflError(f"the training pool did not start: {(self.run_dir / 'pool.log').read_text()}")
                time.sleep(0.05)
        agents = []
        for device_id, shard in self.shards:
            folder = self.run_dir / device_id
            save_npz(DeviceDataset(device_id, self.dataset.classes, shard, empty), folder / "data.npz")
            settings: dict[str, object] = {
                "device_id": device_id, "fleet": self.config.fleet,
                "data": f"npz:{folder / 'data.npz'}", "state_dir": str(folder / "state"),
                "worker": self.config.worker, "torch_device": self.torch_device,
                "share_label_counts": self.config.share_label_counts, "label_noise": self.config.label_noise,
                "classes": ",".join(self.dataset.classes),  # as enrollment tells a board
                # The simulator is the server: its boards accept any batch size and step count it asks for.
                "min_batch_size": 1, "min_local_steps": 0,
            }  # fmt: skip
            if self.config.worker == "pool":
                settings["pool_socket"] = str(pool_socket)
            if self.security is not None:
                settings.update(self._enroll(device_id, folder))
            agents.append(settings)
        if self.security is not None:
            note = self.security.sync_broker()
            if note:
                raise GenflError(f"the broker did not take the simulated devices' logins: {note}")
        per_process = self.config.agents_per_process
        for index in range(0, len(agents), per_process):
            group = agents[index : index + per_process]
            # A cluster's nodes: each process starts on the next node, so the fleet spreads over them all.
            for settings in group:
                settings["broker"] = rotated(self.url, index // per_process)
            name = str(group[0]["device_id"]) if per_process == 1 else f"agents-{index:05d}"
            log_file = self._stack.enter_context(open(self.run_dir / f"{name}.log", "wb"))  # noqa: SIM115
            if per_process == 1:  # as a board runs it: `genfl-edge run --config edge.toml`
                config_file = self.run_dir / name / "edge.toml"
                config_file.write_text(agent_config_text(group[0], "a simulated board's settings"))
                command = [sys.executable, "-m", "edge_agent", "run", "--config", str(config_file)]
                command += ["--log-level", "warning"]
            else:
                spec = self.run_dir / f"{name}.json"
                spec.write_text(json.dumps({"agents": group}))
                command = [sys.executable, "-m", "simulation.multi", "--spec", str(spec)]
            self.processes.append(subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env=env))

    def _enroll(self, device_id: str, folder: Path) -> dict[str, object]:
        """Enroll a simulated device in the signed fleet, as `genfl-edge enroll` does a board: its key in its
        folder, its broker login; the settings its agent needs."""
        assert self.security is not None
        key = generate_signing_key()
        folder.mkdir(parents=True, exist_ok=True)
        save_signing_key(folder / "device.key", key)
        password = self.security.enroll_directly(device_id, public_key_text(key))
        return {"username": device_id, "password": password, "ca_file": str(self.security.ca_file),
                "device_key": str(folder / "device.key"), "server_public_key": self.security.public_key}  # fmt: skip

    @property
    def guard(self) -> FrameGuard | None:
        return None if self.security is None else self.security.guard()

    @property
    def revoked(self) -> Callable[[], set[str]] | None:
        return None if self.security is None else self.security.registry.revoked_ids

    def _agent_logs(self, lines: int = 5) -> str:
        tails = []
        for path in sorted(self.run_dir.glob("*.log")):
            text = path.read_text(errors="replace").strip().splitlines()
            if text:
                tails.append(f"{path.stem}: " + " | ".join(text[-lines:]))
        return "\n".join(tails[:5])

    def run(self, coordinator: Coordinator) -> None:
        last_traffic = time.monotonic()
        while not coordinator.finished:
            if self.coordinator_transport.poll(0.05):
                last_traffic = time.monotonic()
            coordinator.tick()
            dead = [p for p in self.processes if p.poll() is not None]
            if len(dead) == len(self.processes):
                raise GenflError(f"every agent process exited; their logs say:\n{self._agent_logs()}")
            if time.monotonic() - last_traffic > self.config.round_timeout_s + 60:
                raise GenflError(f"simulation stalled in round {coordinator.round_number}:\n{self._agent_logs()}")

    def close(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # Clear the devices' retained states, so that a shared broker keeps nothing of the run.
        topics = Topics(self.config.fleet)
        for device_id, _ in self.shards:
            self.coordinator_transport.publish(topics.device(device_id, "state"), b"", retain=True)
        self._stack.close()


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--torch-device cuda asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"torch device must be cpu, cuda or auto, got {name!r}")
    return name


@dataclass(frozen=True)
class DeviceShards:
    """What a simulation hands its devices: the data set, the model and each device's shard."""

    dataset: DeviceDataset
    model_name: str
    train: LabeledArrays  # the (sub)set that was partitioned
    parts: list[np.ndarray]

    @property
    def shards(self) -> list[tuple[str, LabeledArrays]]:
        return [(f"device-{index:03d}", self.train.subset(part)) for index, part in enumerate(self.parts)]


def device_shards(config: SimulationConfig) -> DeviceShards:
    """Load the data set, pick the model and partition the training set as ``config`` says."""
    dataset = load_dataset(config.dataset, Path(config.data_dir))
    model_name = config.model or models.default_model_for(dataset.input_shape)
    spec = models.get_spec(model_name)
    check_fits_model(dataset, model_name, spec.input_shape, spec.num_classes)
    train = dataset.train
    if config.train_subset is not None and config.train_subset < len(train):
        train = train.subset(stratified_subset(train.labels, config.train_subset, config.seed))
    parts = partition_labels(
        train.labels,
        config.devices,
        scheme=config.partition,
        alpha=config.alpha,
        classes_per_device=config.classes_per_device,
        seed=config.seed,
        min_samples=config.min_samples,
    )
    return DeviceShards(dataset, model_name, train, parts)


def run_simulation(config: SimulationConfig, hooks: SimulationHooks = SimulationHooks()) -> SimulationResult:
    started = time.perf_counter()
    if config.state_dir is not None:  # a signed fleet has its name
        security = FleetSecurity.load(config.state_dir)
        if security is None:
            raise ConfigError(f"{config.state_dir} holds no secured fleet: run broker-config or cluster-config")
        config = replace(config, fleet=security.fleet)
        security.close()
    prepared = device_shards(config)
    dataset, model_name, train, parts = prepared.dataset, prepared.model_name, prepared.train, prepared.parts
    config = replace(config, model=model_name)
    strategy = make_strategy(config, model_name=model_name, classes=dataset.classes)
    test = dataset.test
    if config.eval_subset is not None and config.eval_subset < len(test):
        test = test.subset(stratified_subset(test.labels, config.eval_subset, seed=0))  # fixed: the same for every seed
    torch_device = _resolve_device(config.torch_device)
    import torch

    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.torch_threads)
    evaluate = models.state_evaluator(model_name, test.images, test.labels, torch_device)

    def round_closed(result: RoundResult) -> None:
        if hooks.on_round_closed:
            hooks.on_round_closed(result)

    shards = prepared.shards
    federation: _InMemoryFederation | _ProcessFederation
    if config.transport == "local":
        federation = _InMemoryFederation(shards, config, dataset.classes, torch_device)
    else:
        federation = _ProcessFederation(shards, config, dataset, torch_device)
    try:
        coordinator = Coordinator(
            CoordinatorConfig(
                fleet=config.fleet,
                model_name=model_name,
                rounds=config.rounds,
                min_devices=config.devices,
                round_timeout_s=config.round_timeout_s,
                classes=dataset.classes,
                # In memory nothing is lost, and the devices train one after another in one delivery loop: a
                # device that waits its turn is not silent, and re-sending it its task would only double bytes.
                task_resend_s=None if config.transport == "local" else CoordinatorConfig.task_resend_s,
                secure_aggregation=config.secure_aggregation,
                secagg_phase_s=config.secagg_phase_s,
                privacy=config.privacy(),
            ),
            strategy,
            federation.coordinator_transport,
            models.model_state(models.build_model(model_name, seed=config.seed)),
            evaluator=evaluate,
            hooks=RoundHooks(hooks.on_round_start, hooks.on_update_accepted, round_closed),
            guard=federation.guard,
            revoked=federation.revoked,
        )
        coordinator.start()
        federation.start()
        federation.run(coordinator)
    finally:
        federation.close()
        torch.set_num_threads(threads_before)
    histogram = label_histogram(train.labels, parts, dataset.num_classes)
    return SimulationResult(
        config=config,
        model_name=model_name,
        rounds=coordinator.results,
        final_state=coordinator.global_state,
        histogram=histogram,
        classes=dataset.classes,
        seconds=time.perf_counter() - started,
        rejected=dict(coordinator.rejected),
    )


def write_outputs(result: SimulationResult, out: Path, compared: Sequence[SimulationResult] = ()) -> dict[str, Path]:
    """``metrics.json`` (with the compared runs), ``curve.png`` (every run's curve) and ``model.safetensors``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / "metrics.json", "curve": out / "curve.png", "model": out / "model.safetensors"}
    metrics = result.metrics()
    if compared:
        metrics["compared"] = [other.metrics() for other in compared]
    atomic_write(paths["metrics"], (json.dumps(metrics, indent=2) + "\n").encode())
    meta = {"model": result.model_name, "classes": json.dumps(list(result.classes))}
    atomic_write(paths["model"], encode_tensors(result.final_state, meta))
    runs = [result, *compared]
    plot_curve(
        {run.config.strategy: [r.accuracy or 0.0 for r in run.rounds] for run in runs},
        paths["curve"],
        title=f"{result.config.dataset}, {result.config.devices} devices"
        + (f", {result.config.classes_per_device} classes each" if result.config.partition == "shards" else ""),
    )
    return paths


def plot_curve(curves: dict[str, list[float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for label, values in curves.items():
        axis.plot(range(1, len(values) + 1), values, marker="o", label=label)
    axis.set_xlabel("round")
    axis.set_ylabel("test accuracy")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
