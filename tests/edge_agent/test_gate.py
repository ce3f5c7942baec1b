import datetime as dt

import pytest

from edge_agent._gate import GatedRunner, TrainWindow
from protocol import ConfigError, Task, TrainConfig

CLASSES = tuple("0123456789")  # the fleet's class names every task carries


def test_train_window_wraps_midnight() -> None:
    window = TrainWindow.parse("22:00-06:00")
    assert window.contains(dt.time(23, 30)) and window.contains(dt.time(5, 59))
    assert not window.contains(dt.time(6, 0)) and not window.contains(dt.time(12, 0))
    assert TrainWindow.parse("09:00-17:00").contains(dt.time(9, 0))
    with pytest.raises(ConfigError, match="22:00-06:00"):
        TrainWindow.parse("10pm-6am")


class Recorder:
    def __init__(self) -> None:
        self.started: list[int] = []

    def start(self, task, model_blob, done, synthetic_blob=None, probe_blob=None) -> None:  # type: ignore[no-untyped-def]
        self.started.append(task.round)


TASK = Task(
    round=4,
    device_id="d",
    model_name="m",
    model_id="a" * 64,
    model_size=1,
    config=TrainConfig(),
    classes=CLASSES,
)


def test_a_task_outside_the_window_waits_for_it() -> None:
    now = [dt.datetime(2026, 1, 1, 12, 0)]
    inner = Recorder()
    gate = GatedRunner(inner, TrainWindow.parse("22:00-06:00"), clock=lambda: now[0])
    gate.start(TASK, b"", lambda task, outcome: None)
    gate.check()
    assert inner.started == [] and gate.waiting
    now[0] = dt.datetime(2026, 1, 1, 22, 1)
    gate.check()
    assert inner.started == [4] and not gate.waiting


def test_too_little_free_memory_is_a_reported_failure() -> None:
    outcomes: list[object] = []
    gate = GatedRunner(Recorder(), min_free_mb=800, free_memory=lambda: 300.0)
    gate.start(TASK, b"", lambda task, outcome: outcomes.append(outcome))
    assert outcomes == ["only 300 MB of memory free, the worker needs 800 MB"]
