"""The settings of ``genfl-server simulate``: the strategy's, the fleet run's and the simulated fleet's own
(its data set, its partition, its devices and how they run). Imports no torch, so the command starts fast."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cloud_server.learning._robust import AGGREGATORS
from cloud_server.ops._run_config import FleetRunConfig
from protocol import ConfigError, parse_brokers, setting

from ._attacks import ATTACKS, Attack

__all__ = ["SimulationConfig"]


@dataclass(frozen=True, kw_only=True)
class SimulationConfig(FleetRunConfig):
    dataset: str = setting("digits", "digits, cifar10, folder:PATH or zip:PATH.")
    data_dir: str = setting("data", "Where cifar10 is (or is downloaded to).")
    devices: int = setting(10, "Number of simulated devices.")
    partition: str = setting("dirichlet", "dirichlet or shards.")
    alpha: float = setting(0.5, "Dirichlet concentration (smaller = more skewed).")
    classes_per_device: int = setting(2, "Classes per device for --partition shards.")
    min_samples: int = setting(10, "Least samples any device gets.")
    rounds: int = setting(10, "Federated rounds.")
    model: str | None = setting(None, "Model from the registry (default: by data set).")
    train_subset: int | None = setting(None, "Train on a stratified subset of this size.")
    eval_subset: int | None = setting(
        None, "Evaluate on a fixed stratified subset of the test split (the same for every seed)."
    )
    fleet: str = setting("sim", cli=False)  # the command names an MQTT run's fleet afresh
    torch_device: str = setting("cpu", "Where simulated devices train: cpu, cuda or auto.")
    # Threads per simulated device. Fixed so that in-process and worker-process training give the
    # same bits (CPU kernels split their sums by thread count); one thread, like a small board.
    torch_threads: int = setting(1, "Torch threads per simulated device (one, like a small board).")
    transport: str = setting("local", "local (in-memory) or mqtt (a connection per device).")
    # The agents' worker mode: pool (one torch-preloaded training pool for the whole fleet, the fastest),
    # persistent or per-task (a worker process per agent, as on boards).
    worker: str = setting("pool", "--transport mqtt: pool (one torch-preloaded training pool), persistent or per-task.")
    worker_slots: int | None = setting(None, "--worker pool: at most this many train at once (default: the cores).")
    agents_per_process: int = setting(
        1, "--transport mqtt: simulated agents per process (a thousand fit in one machine)."
    )
    malicious: int = setting(0, "Devices that send corrupted updates (in-memory).")
    attack: str = setting("sign-flip", "What --malicious devices do (sign-flip: x-10).", choices=Attack)
    state_dir: Path | None = setting(
        None,
        "--transport mqtt: run a signed fleet, the one broker-config or cluster-config set up in this server state "
        "dir (simulate enrolls its devices there: give it a state dir of its own).",
    )
    share_label_counts: bool = setting(True, "Devices send label histograms (GenFL tailors batches by them).")
    label_noise: float | None = setting(None, "Laplace noise on the histograms (epsilon-DP).", metavar="EPSILON")

    def __post_init__(self) -> None:
        super().__post_init__()  # the strategy's own checks
        if self.devices < 1:
            raise ConfigError(f"devices must be at least 1, got {self.devices}")
        if self.rounds < 1:
            raise ConfigError(f"rounds must be at least 1, got {self.rounds}")
        if self.train_subset is not None and self.train_subset < self.devices:
            raise ConfigError("train subset must hold at least one sample per device")
        if self.eval_subset is not None and self.eval_subset < 1:
            raise ConfigError("the evaluation subset must hold at least one sample")
        if self.worker not in ("pool", "persistent", "per-task"):
            raise ConfigError(f"worker must be pool, persistent or per-task, got {self.worker!r}")
        if self.worker_slots is not None and (self.worker_slots < 1 or self.worker != "pool"):
            raise ConfigError("worker slots need --worker pool and a count of at least 1")
        if self.agents_per_process < 1:
            raise ConfigError("agents per process must be at least 1")
        if self.aggregate not in AGGREGATORS:
            raise ConfigError(f"unknown aggregation {self.aggregate!r}; use one of {', '.join(AGGREGATORS)}")
        if self.attack not in ATTACKS:
            raise ConfigError(f"unknown attack {self.attack!r}; use one of {', '.join(ATTACKS)}")
        if not 0 <= self.malicious <= self.devices:
            raise ConfigError(f"malicious devices must be 0..{self.devices}, got {self.malicious}")
        if self.malicious and self.transport != "local":
            raise ConfigError("--malicious is simulated in-process: use --transport local")
        if self.torch_threads < 1:
            raise ConfigError("torch threads must be at least 1")
        if self.label_noise is not None and not self.label_noise > 0:
            raise ConfigError(f"label noise epsilon must be positive, got {self.label_noise}")
        if self.transport not in ("local", "mqtt"):
            raise ConfigError(f"transport must be local or mqtt, got {self.transport!r}")
        if self.broker is not None:
            parse_brokers(self.broker)
        if self.state_dir is not None and self.transport != "mqtt":
            raise ConfigError("--state-dir runs a signed fleet over a broker: use --transport mqtt")
