"""The system tests' wait: it gives up on a system that stands still, not on one that is slow."""

from __future__ import annotations

import time

import pytest

from tests.system._helpers import wait_for


def test_a_wait_goes_on_while_there_is_progress_and_gives_up_without() -> None:
    started = time.monotonic()
    ready = lambda: time.monotonic() - started > 1.5  # noqa: E731 - slower than the timeout
    ticking = lambda: int((time.monotonic() - started) / 0.2)  # noqa: E731 - something moves every 0.2 s
    assert wait_for(ready, 1.0, "a slow but moving system", progress=ticking)
    still = time.monotonic()
    with pytest.raises(AssertionError, match="1 s without progress"):
        wait_for(lambda: False, 1.0, "a system that stands still", progress=lambda: 0)
    assert 0.9 < time.monotonic() - still < 2.0
