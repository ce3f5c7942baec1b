"""When a board may train: an optional daily window and a free-memory floor."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from protocol import ConfigError, Task

from ._agent import TrainingDone, TrainingRunner

__all__ = ["GatedRunner", "TrainWindow", "available_memory_mb"]

log = logging.getLogger("genfl.edge")
_HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


@dataclass(frozen=True)
class TrainWindow:
    """``HH:MM-HH:MM`` local time; may wrap midnight (``22:00-06:00``)."""

    start: dt.time
    end: dt.time

    @classmethod
    def parse(cls, text: str) -> TrainWindow:
        first, _, second = text.partition("-")
        bounds = []
        for part in (first.strip(), second.strip()):
            match = _HHMM.fullmatch(part)
            if not match:
                raise ConfigError(f"train window must look like 22:00-06:00, got {text!r}")
            bounds.append(dt.time(int(match.group(1)), int(match.group(2))))
        if bounds[0] == bounds[1]:
            raise ConfigError("train window start and end must differ")
        return cls(bounds[0], bounds[1])

    def contains(self, moment: dt.time) -> bool:
        if self.start < self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end


def available_memory_mb(meminfo: Path = Path("/proc/meminfo")) -> float | None:
    """MemAvailable in MB, or None where /proc/meminfo is not there."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


class GatedRunner:
    """Wraps a runner: holds a task until the window opens; refuses when memory is short."""

    def __init__(
        self,
        inner: TrainingRunner,
        window: TrainWindow | None = None,
        min_free_mb: float = 0.0,
        clock: Callable[[], dt.datetime] = dt.datetime.now,
        free_memory: Callable[[], float | None] = available_memory_mb,
    ) -> None:
        self.inner = inner
        self.window = window
        self.min_free_mb = min_free_mb
        self._clock = clock
        self._free_memory = free_memory
        self._held: tuple[Task, bytes, TrainingDone, bytes | None] | None = None

    def start(self, task: Task, model_blob: bytes, done: TrainingDone, synthetic_blob: bytes | None = None) -> None:
        if self.window is not None and not self.window.contains(self._clock().time()):
            log.info(
                "round %d: outside the train window %s-%s; waiting", task.round, self.window.start, self.window.end
            )
            self._held = (task, model_blob, done, synthetic_blob)
            return
        free = self._free_memory()
        if self.min_free_mb and free is not None and free < self.min_free_mb:
            done(task, f"only {free:.0f} MB of memory free, the worker needs {self.min_free_mb:.0f} MB")
            return
        self.inner.start(task, model_blob, done, synthetic_blob)

    def check(self) -> None:
        """Start a held task once the window is open; then let the inner runner report."""
        if self._held is not None and self.window is not None and self.window.contains(self._clock().time()):
            held, self._held = self._held, None
            self.start(*held)
        check = getattr(self.inner, "check", None)
        if check is not None:
            check()

    @property
    def waiting(self) -> bool:
        return self._held is not None
