"""The settings of ``genfl-server serve``: the strategy's, the fleet run's and the service's own (its state,
fleet, broker and metrics). Imports no torch, so the command starts fast."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from protocol import DEFAULT_CHUNK_SIZE, ConfigError, parse_brokers, parse_classes, setting, validate_classes

from ..broker._cluster import host_list
from ..rounds._config import CoordinatorConfig
from ._run_config import FleetRunConfig

__all__ = ["ServeConfig"]


@dataclass(frozen=True, kw_only=True)
class ServeConfig(FleetRunConfig):
    state_dir: Path = setting(help="SQLite state, blobs and per-round checkpoints.")
    fleet: str = setting("default", "Fleet name (the topic prefix genfl/<fleet>/).")
    model: str = setting("cnn-digits", "Model from the registry.")
    # The fleet's class names in the model's order. None: the list the state was started with, or for a new
    # state the numbers 0..N-1 (the bundled digits' names).
    classes: tuple[str, ...] | None = setting(
        None,
        "The fleet's class names in the model's order, comma-separated (boards map their folders onto them by "
        "name). Default: the list the state dir started with, else 0,1,...,N-1.",
        parse=parse_classes,
    )
    rounds: int = setting(100, "Rounds to run.")
    min_devices: int = setting(1, "Devices needed to open and to close a round.")
    max_failed_rounds: int = setting(
        CoordinatorConfig.max_failed_rounds or 0,
        "Stop after this many rounds in a row that every answering board failed (0: never).",
    )
    accept_older_state: bool = setting(
        False, "Go on from a state older than the fleet (a restored backup), numbering rounds after it."
    )
    chunk_size: int = setting(DEFAULT_CHUNK_SIZE, "Blob chunk size in bytes (fit the broker's max packet).")
    broker_port: int | None = setting(None, "Embedded broker port (default: free).")
    max_update_norm: float | None = setting(None, "Reject updates with a larger L2 norm.", flag="--max-norm")
    max_weight_ratio: float = setting(
        CoordinatorConfig.max_weight_ratio or 0.0,
        "No device counts for more than this many times the median sample count of the round's picked (0: no cap).",
    )
    task_resend_s: float = setting(
        CoordinatorConfig.task_resend_s or 0.0,
        "Send a picked device that is silent this long its task again, then after twice as long (0: never).",
        flag="--task-resend",
    )
    max_states_per_minute: int = setting(
        CoordinatorConfig.max_states_per_minute, "State messages a device may send a minute; more are refused."
    )
    metrics_port: int | None = setting(None, "Serve Prometheus metrics on http://HOST:PORT/metrics (0: a free port).")
    metrics_host: str = setting("127.0.0.1", "Address the metrics (and dashboard) listen on.")
    metrics_names: tuple[str, ...] | None = setting(
        None,
        "Host names the metrics and dashboard answer to besides IP addresses, localhost and this machine's name "
        "(comma-separated): a request naming another is refused (DNS rebinding).",
        flag="--metrics-name",
        parse=host_list,
        metavar="NAMES",
    )
    dashboard: bool = setting(False, "A read-only fleet page on the metrics port.")
    eval_dataset: str | None = setting(None, "Score each new model on this data set's test split (e.g. digits).")
    eval_data_dir: Path = setting(Path("data"), "Where --eval-dataset's files are.")
    release_every: int = setting(0, "Release the model every N rounds to the boards (0: only `genfl-server release`).")
    release_when_better: bool = setting(False, "Release a round's model when it beats the current release's accuracy.")
    release_float: bool = setting(False, "Automatic releases in float instead of int8.")
    release_calibration: str | None = setting(
        None,
        "Images to calibrate int8 releases on (default: the synthetic pool; digits for cnn-digits).",
        metavar="SPEC",
    )

    def __post_init__(self) -> None:
        super().__post_init__()  # the strategy's own checks
        import models  # torch: only when a config is made

        spec = models.get_spec(self.model)
        if self.classes is not None:
            validate_classes(self.classes, spec.num_classes)
        if self.broker is not None:
            parse_brokers(self.broker)
        if self.broker_port is not None and not 0 < self.broker_port < 65536:
            raise ConfigError(f"broker port must be 1..65535, got {self.broker_port}")
        if self.metrics_port is not None and not 0 <= self.metrics_port < 65536:
            raise ConfigError(f"metrics port must be 0..65535, got {self.metrics_port}")
        if self.max_weight_ratio != 0 and not self.max_weight_ratio >= 1.0:
            raise ConfigError(f"the weight cap ratio must be 0 (no cap) or at least 1, got {self.max_weight_ratio}")
        if not self.task_resend_s >= 0:
            raise ConfigError(f"the task re-send time must be 0 (never) or more seconds, got {self.task_resend_s}")
        if self.secure_aggregation and self.max_update_norm is not None:
            raise ConfigError("--max-norm checks each device's update; under --secure-aggregation the server sees sums")
        if self.release_every < 0:
            raise ConfigError(f"--release-every must be 0 (off) or a number of rounds, got {self.release_every}")
        if self.release_when_better and self.eval_dataset is None:
            raise ConfigError("--release-when-better compares the server's accuracy: give --eval-dataset too")
        automatic = self.release_every or self.release_when_better
        calibrated = self.release_calibration or self.genfl.synthetic_pool or self.model == "cnn-digits"
        if automatic and not self.release_float and not calibrated:
            raise ConfigError("automatic int8 releases need images to calibrate on: --release-calibration SPEC, a "
                              "--synthetic-pool, or --release-float")  # fmt: skip
        if self.dashboard and self.metrics_port is None:
            raise ConfigError("--dashboard is served on the metrics port: give --metrics-port too")
