"""The coordinator's settings and what it keeps of each device."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from protocol import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_ROUND_TIMEOUT_S,
    MIN_CHUNK_SIZE,
    ConfigError,
    default_classes,
    validate_classes,
)

__all__ = ["SECAGG_PHASE_S", "CoordinatorConfig", "DeviceRecord", "PrivacyConfig"]

SECAGG_PHASE_S = 60.0  # secure aggregation: seconds for each exchange of keys and shares


@dataclass(frozen=True)
class PrivacyConfig:
    """Client-level DP-FedAvg: updates clipped to ``clip_norm``, Gaussian noise of ``noise_multiplier * clip_norm``
    on each round's sum, epsilon at ``delta`` accounted; no round opens that would spend past ``budget``."""

    clip_norm: float
    noise_multiplier: float
    delta: float = 1e-5
    budget: float | None = None

    def __post_init__(self) -> None:
        if not (self.clip_norm > 0 and math.isfinite(self.clip_norm)):
            raise ConfigError(f"the clipping norm must be a positive number, got {self.clip_norm}")
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            raise ConfigError(f"the noise multiplier must be a positive number, got {self.noise_multiplier}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"delta must be in (0, 1), got {self.delta}")
        if self.budget is not None and not self.budget > 0:
            raise ConfigError(f"the privacy budget must be a positive epsilon, got {self.budget}")


@dataclass(frozen=True)
class CoordinatorConfig:
    fleet: str
    model_name: str
    rounds: int
    min_devices: int = 1
    round_timeout_s: float = DEFAULT_ROUND_TIMEOUT_S
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_update_norm: float | None = None  # reject updates whose L2 norm is larger
    # A device's weight (its claimed sample count) is capped at this many times the median claim of the
    # round's picked devices, so that no device decides the average by what it claims. None: no cap.
    max_weight_ratio: float | None = 5.0
    # A picked device that neither asked for a blob nor answered for this long gets its task again (then
    # after twice as long, and so on): a task or a chunk a broker lost (a cluster losing a node) costs a
    # wait, not the device's round. A device that has its task treats a copy as a repeat. None: never.
    task_resend_s: float | None = 30.0
    # A device's state messages (online, offline, new counts) beyond this many in a minute are refused: each
    # one costs a journal write and may re-send a task, so a flood from one device must not steer the server.
    max_states_per_minute: int = 30
    # Stop opening rounds after this many in a row in which no update came and every board that answered
    # reported a failure (a model that does not fit the boards' data, say): they cannot succeed. None: never.
    max_failed_rounds: int | None = 3
    # Seconds after start before any task goes out: the devices' retained states arrive first, and with them
    # the latest round each has taken (serve waits; a simulation, whose states come at once, need not).
    settle_s: float = 0.0
    # A state older than the fleet (a device has taken a later round than it knows: a restored backup, a copy)
    # stops the coordinator unless this is set; then it goes on from its model, numbering rounds after the fleet's.
    accept_older_state: bool = False
    # The fleet's class names in the model's order: every task carries them, and boards number their data by
    # them (serve and simulate set them; the default is the bundled digits' numbers).
    classes: tuple[str, ...] = default_classes(10)
    # Devices mask their updates and the server unmasks only the round's sum (see _secure_round), each exchange of
    # keys and shares given ``secagg_phase_s``.
    secure_aggregation: bool = False
    secagg_phase_s: float = SECAGG_PHASE_S
    privacy: PrivacyConfig | None = None  # client-level DP (the devices add the noise under secure aggregation)

    def __post_init__(self) -> None:
        validate_classes(self.classes)
        if self.max_update_norm is not None and not self.max_update_norm > 0:
            raise ConfigError("the update norm bound must be positive")
        if self.max_weight_ratio is not None and not self.max_weight_ratio >= 1.0:
            raise ConfigError(f"the weight cap ratio must be at least 1, got {self.max_weight_ratio}")
        if self.rounds < 1:
            raise ConfigError(f"rounds must be at least 1, got {self.rounds}")
        if self.min_devices < 1:
            raise ConfigError(f"min devices must be at least 1, got {self.min_devices}")
        if self.round_timeout_s <= 0:
            raise ConfigError("round timeout must be positive")
        if not self.secagg_phase_s > 0:
            raise ConfigError(f"secagg_phase_s must be positive, got {self.secagg_phase_s}")
        if not self.settle_s >= 0:
            raise ConfigError(f"the settle time must be 0 or more seconds, got {self.settle_s}")
        if self.task_resend_s is not None and not self.task_resend_s > 0:
            raise ConfigError("the task re-send interval must be positive")
        if self.max_states_per_minute < 1:
            raise ConfigError(f"max states per minute must be at least 1, got {self.max_states_per_minute}")
        if self.max_failed_rounds is not None and self.max_failed_rounds < 1:
            raise ConfigError(f"max failed rounds must be at least 1, got {self.max_failed_rounds}")
        if not MIN_CHUNK_SIZE <= self.chunk_size <= 256 * 1024 * 1024:
            raise ConfigError(f"chunk size must be 1 KiB..256 MiB, got {self.chunk_size}")


@dataclass
class DeviceRecord:
    device_id: str
    online: bool
    num_samples: int
    label_counts: tuple[float, ...] | None
    rounds: int = 0
    last_round: int | None = None  # the latest round the device says its update counted in
    release: int | None = None  # the model release it says it runs
    release_score: float | None = None  # ... and how it scored on the device's held-out data
    # What tells a replayed state apart (see check_fresh_state): the highest state number taken of each of the
    # device's recent runs (sessions), the run its last "online" came from, and whether its will came last.
    sessions: dict[str, int] = field(default_factory=dict)
    session: str | None = None
    will_taken: bool = False
