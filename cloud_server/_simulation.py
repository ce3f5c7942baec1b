"""A whole federation in one process: coordinator + N agents over a transport.

The simulation is the benchmark harness of the toolkit: it partitions a data
set into non-IID device shards, runs real agents and a real coordinator that
talk through the transport seam, and evaluates the global model on the
held-out test split after each round.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

import models
from edge_agent import AgentCore, InProcessRunner, check_fits_model, label_histogram, load_dataset, partition_labels
from protocol import (
    BlobStore,
    BrokerAddress,
    ConfigError,
    DeviceState,
    GenflError,
    InMemoryBus,
    MqttTransport,
    Task,
    TensorDict,
    Topics,
    Transport,
    Will,
    encode_message,
    encode_tensors,
)

from ._coordinator import Coordinator, CoordinatorConfig, RoundResult
from ._strategy import StrategyConfig, make_strategy

__all__ = ["SimulationConfig", "SimulationHooks", "SimulationResult", "run_simulation", "write_outputs"]


@dataclass(frozen=True)
class SimulationConfig:
    dataset: str = "digits"
    data_dir: str = "data"
    devices: int = 10
    partition: str = "dirichlet"
    alpha: float = 0.5
    classes_per_device: int = 2
    min_samples: int = 10
    rounds: int = 10
    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.05
    strategy: str = "fedavg"
    prox_mu: float = 0.01
    fraction: float = 1.0
    seed: int = 0
    model: str | None = None
    train_subset: int | None = None  # use only this many training samples (CPU benchmarks)
    fleet: str = "sim"
    torch_device: str = "cpu"  # where simulated devices train: cpu, cuda or auto
    transport: str = "local"  # local (in-memory) or mqtt
    broker: str = "mqtt://127.0.0.1:1883"
    round_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ConfigError(f"devices must be at least 1, got {self.devices}")
        if self.rounds < 1:
            raise ConfigError(f"rounds must be at least 1, got {self.rounds}")
        if self.train_subset is not None and self.train_subset < self.devices:
            raise ConfigError("train subset must hold at least one sample per device")
        if self.transport not in ("local", "mqtt"):
            raise ConfigError(f"transport must be local or mqtt, got {self.transport!r}")


@dataclass(frozen=True)
class SimulationHooks:
    """Callbacks for progress display; all optional."""

    on_round_start: Callable[[int, int], None] | None = None  # (round, devices picked)
    on_device_trained: Callable[[Task], None] | None = None
    on_round_closed: Callable[[RoundResult], None] | None = None


@dataclass(frozen=True)
class SimulationResult:
    config: SimulationConfig
    model_name: str
    rounds: list[RoundResult]
    final_state: TensorDict
    histogram: np.ndarray  # (devices, classes)
    classes: tuple[str, ...]
    seconds: float

    @property
    def final_accuracy(self) -> float | None:
        return self.rounds[-1].accuracy if self.rounds else None

    def metrics(self) -> dict[str, object]:
        return {
            "config": {**asdict(self.config), "model": self.model_name},
            "rounds": [asdict(r) for r in self.rounds],
            "final_accuracy": self.final_accuracy,
            "seconds": self.seconds,
        }


def _subset(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """A seeded, class-stratified subset of ``size`` indices."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    per_class = {int(c): order[labels[order] == c] for c in np.unique(labels)}
    share = size / len(labels)
    picked = [members[: max(1, round(len(members) * share))] for members in per_class.values()]
    return np.sort(np.concatenate(picked))


def _offline(device_id: str) -> bytes:
    return encode_message(DeviceState(device_id=device_id, state="offline"))


class _Network:
    """The simulation's transports: one in-memory bus, or one MQTT connection per participant."""

    def __init__(self, config: SimulationConfig) -> None:
        self.config = config
        self.bus = InMemoryBus() if config.transport == "local" else None
        self.endpoints: list[MqttTransport] = []

    def endpoint(self, name: str, will: Will | None = None) -> Transport:
        if self.bus is not None:
            return self.bus.connect()
        transport = MqttTransport(
            BrokerAddress.parse(self.config.broker), f"{self.config.fleet}-{name}", will=will, session_expiry_s=0
        )
        transport.connect()
        self.endpoints.append(transport)
        return transport

    def run_until(self, done: Callable[[], bool], coordinator: Coordinator) -> None:
        if self.bus is not None:
            while not done():
                if self.bus.drain() == 0:
                    raise GenflError(f"simulation stalled in round {coordinator.round_number}: nothing to deliver")
            return
        idle_since = time.monotonic()
        while not done():
            moved = sum(t.poll(0.0) for t in self.endpoints)
            coordinator.tick()
            if moved:
                idle_since = time.monotonic()
            elif time.monotonic() - idle_since > self.config.round_timeout_s + 30:
                raise GenflError(f"simulation stalled in round {coordinator.round_number}: no traffic")
            else:
                time.sleep(0.002)

    def close(self, retained_topics: list[str]) -> None:
        """Disconnect; clear the retained device states so a shared broker keeps nothing of the run."""
        if self.endpoints:
            for topic in retained_topics:
                self.endpoints[0].publish(topic, b"", retain=True)
        for transport in self.endpoints:
            transport.close()


def _resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--torch-device cuda asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"torch device must be cpu, cuda or auto, got {name!r}")
    return name


def run_simulation(config: SimulationConfig, hooks: SimulationHooks = SimulationHooks()) -> SimulationResult:
    started = time.perf_counter()
    dataset = load_dataset(config.dataset, Path(config.data_dir))
    model_name = config.model or models.default_model_for(dataset.input_shape)
    spec = models.get_spec(model_name)
    check_fits_model(dataset, model_name, spec.input_shape, spec.num_classes)
    train = dataset.train
    if config.train_subset is not None and config.train_subset < len(train):
        train = train.subset(_subset(train.labels, config.train_subset, config.seed))
    parts = partition_labels(
        train.labels,
        config.devices,
        scheme=config.partition,
        alpha=config.alpha,
        classes_per_device=config.classes_per_device,
        seed=config.seed,
        min_samples=config.min_samples,
    )
    strategy = make_strategy(
        config.strategy,
        StrategyConfig(
            local_epochs=config.local_epochs,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            prox_mu=config.prox_mu,
            fraction=config.fraction,
            seed=config.seed,
        ),
    )
    test = dataset.test
    torch_device = _resolve_device(config.torch_device)
    eval_model = models.build_model(model_name).to(torch_device)

    def evaluate(state: TensorDict) -> tuple[float, float]:
        models.load_state(eval_model.cpu(), state)
        eval_model.to(torch_device)
        result = models.evaluate(eval_model, test.images, test.labels)
        return result.loss, result.accuracy

    def round_closed(result: RoundResult) -> None:
        if hooks.on_round_closed:
            hooks.on_round_closed(result)

    network = _Network(config)
    initial = models.model_state(models.build_model(model_name, seed=config.seed))
    coordinator = Coordinator(
        CoordinatorConfig(
            fleet=config.fleet,
            model_name=model_name,
            rounds=config.rounds,
            min_devices=config.devices,
            round_timeout_s=config.round_timeout_s,
        ),
        strategy,
        network.endpoint("coordinator"),
        initial,
        evaluator=evaluate,
        on_round_closed=round_closed,
        on_round_opened=hooks.on_round_start,
    )
    topics = Topics(config.fleet)
    agents = []
    for index, part in enumerate(parts):
        device_id = f"device-{index:03d}"
        shard = train.subset(part)
        runner = InProcessRunner(device_id, shard, on_trained=hooks.on_device_trained, torch_device=torch_device)
        endpoint = network.endpoint(device_id, will=Will(topics.device(device_id, "state"), _offline(device_id)))
        agents.append(AgentCore(device_id, topics, endpoint, BlobStore(), runner, num_samples=len(shard)))
    try:
        coordinator.start()
        for agent in agents:
            agent.start()
        network.run_until(lambda: coordinator.finished, coordinator)
    finally:
        network.close([topics.device(a.device_id, "state") for a in agents])
    histogram = label_histogram(train.labels, parts, dataset.num_classes)
    return SimulationResult(
        config=config,
        model_name=model_name,
        rounds=coordinator.results,
        final_state=coordinator.global_state,
        histogram=histogram,
        classes=dataset.classes,
        seconds=time.perf_counter() - started,
    )


def write_outputs(result: SimulationResult, out: Path) -> dict[str, Path]:
    """``metrics.json``, ``curve.png`` and ``model.safetensors`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / "metrics.json", "curve": out / "curve.png", "model": out / "model.safetensors"}
    paths["metrics"].write_text(json.dumps(result.metrics(), indent=2) + "\n")
    paths["model"].write_bytes(encode_tensors(result.final_state, {"model": result.model_name}))
    plot_curve(
        {result.config.strategy: [r.accuracy or 0.0 for r in result.rounds]},
        paths["curve"],
        title=result.config.dataset,
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
