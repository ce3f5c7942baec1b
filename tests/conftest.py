"""Shared fixtures: the machine's Mosquitto, and a fleet name no other run uses."""

from __future__ import annotations

import os
import socket
import uuid

import pytest
from hypothesis import HealthCheck, settings

from tests.system._helpers import skip_unless_ci

# Fuzzing: a few hundred cases per decoder in `make test`; `make fuzz` runs 10,000 each.
settings.register_profile("default", max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=10_000, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

MOSQUITTO = ("127.0.0.1", 1883)

# The GenFL generator takes every core by default; two test workers on two cores would then
# oversubscribe and spin (the digits GenFL test: 171 s instead of 31 s). One thread also makes its
# results the same on any machine.
os.environ.setdefault("GENFL_GENERATOR_THREADS", "1")
# The same for every test's torch (and the agents the tests start): two workers with two threads each on two
# cores measured contention (the FedProx test: 18 s next to another worker's training, 3 s alone).
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _answers(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def mosquitto_url() -> str:
    """mqtt:// URL of the machine's Mosquitto; skips (or fails under GENFL_REQUIRE_MOSQUITTO=1) without one."""
    if not _answers(MOSQUITTO):
        skip_unless_ci(f"no Mosquitto answering at {MOSQUITTO[0]}:{MOSQUITTO[1]}")
    return f"mqtt://{MOSQUITTO[0]}:{MOSQUITTO[1]}"


@pytest.fixture
def fleet() -> str:
    """A random fleet prefix, so that runs sharing a broker never cross."""
    return f"test-{uuid.uuid4().hex[:10]}"


# `make test-fast` runs `-m "not slow"`: the unit tests. Everything in tests/system/ (brokers, processes) is slow;
# so are the tests marked slow where they run whole simulations, and those that need something of the machine
# (`-m broker`, `nats`, `chromium`, `root` pick those).
_NEEDS = ("broker", "nats", "chromium", "root")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if {"mosquitto_url", "secured"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.broker)
        if "/tests/system/" in str(item.path).replace("\\", "/") or any(item.get_closest_marker(n) for n in _NEEDS):
            item.add_marker(pytest.mark.slow)
    # The slow ones first: with two workers, a long test that starts last ends the run alone.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
