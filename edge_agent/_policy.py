"""What this device agrees to do for the server: a local policy over each task's training config.

The server chooses the training config of every task. A curious server could
choose one that makes the update reveal the data, e.g. one full-batch,
zero-momentum float step from a zeroed classifier, whose gradient spells out
the label histogram. The device bounds what it accepts and refuses the rest
(it reports a failure with the reason, so the round does not wait for it):

* ``min_batch_size``: no task with smaller batches (a batch of one is a
  per-sample gradient);
* ``min_local_steps``: at least this many optimizer steps over the local data
  (one step makes the update a single gradient of all local data);
* ``allowed_codecs`` and ``require_qat``: how the update may be encoded and
  trained;
* ``require_secure_aggregation``: no task whose update would go to the server
  in the clear;
* ``min_noise_multiplier``: no task without client-level differential privacy
  at least this strong (its update clipped, Gaussian noise of at least this
  many clipping norms on the round's sum: added by the boards themselves under
  secure aggregation, promised by the server otherwise).

The first ones bound, not remove, what an update reveals: an update is a
function of the data, and a crafted task reads a label histogram through any
of them. Under secure aggregation the server sees only the round's sum of at
least three boards' updates (docs/security.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol import CODECS, ConfigError, TrainConfig

__all__ = ["TaskPolicy", "local_steps"]


def local_steps(num_samples: int, batch_size: int, epochs: int) -> int:
    """Optimizer steps of ``epochs`` passes (a last batch of fewer than two samples is skipped)."""
    full, rest = divmod(num_samples, batch_size)
    return epochs * (full + (1 if rest >= 2 else 0))


@dataclass(frozen=True)
class TaskPolicy:
    min_batch_size: int = 8
    min_local_steps: int = 2
    allowed_codecs: tuple[str, ...] = tuple(CODECS)
    require_qat: bool = False
    require_secure_aggregation: bool = False
    min_noise_multiplier: float | None = None

    def __post_init__(self) -> None:
        if self.min_noise_multiplier is not None and not self.min_noise_multiplier > 0:
            raise ConfigError(f"the minimum noise multiplier must be positive, got {self.min_noise_multiplier}")
        if self.min_batch_size < 1 or self.min_local_steps < 0:
            raise ConfigError("the minimum batch size must be at least 1 and the minimum local steps at least 0")
        unknown = sorted(set(self.allowed_codecs) - set(CODECS))
        if unknown or not self.allowed_codecs:
            raise ConfigError(f"allowed codecs must be some of {', '.join(CODECS)}, got {list(self.allowed_codecs)}")

    def refusal(self, config: TrainConfig, num_samples: int) -> str | None:
        """Why this device will not train ``config`` on ``num_samples`` samples, or None if it will."""
        if config.batch_size < self.min_batch_size:
            return f"batch size {config.batch_size} is below this device's minimum {self.min_batch_size}"
        steps = local_steps(num_samples, config.batch_size, config.local_epochs)
        if steps < self.min_local_steps:
            return f"{steps} local steps is below this device's minimum {self.min_local_steps}"
        if config.codec not in self.allowed_codecs:
            return f"codec {config.codec} is not allowed here (allowed: {', '.join(self.allowed_codecs)})"
        if self.require_qat and not config.qat:
            return "this device trains quantization-aware only"
        if self.require_secure_aggregation and not config.secure_aggregation:
            return "this device sends its update under secure aggregation only (serve --secure-aggregation)"
        wanted = self.min_noise_multiplier
        if wanted is not None and (config.clip_norm is None or config.noise_multiplier < wanted):
            offered = "none" if config.clip_norm is None else f"noise multiplier {config.noise_multiplier:g}"
            return f"this device trains under differential privacy with noise multiplier >= {wanted:g} ({offered})"
        return None
