"""The operator endpoint runs in the coordinator's process: no client may hold its threads or file descriptors,
and a page of another site (DNS rebinding) gets nothing."""

from __future__ import annotations

import http.client
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_server.ops import _dashboard
from cloud_server.ops._dashboard import OperatorServer, allowed_host
from cloud_server.ops._metrics import FleetMetrics


@pytest.fixture
def endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[OperatorServer]:
    monkeypatch.setattr(_dashboard, "REQUEST_DEADLINE_S", 2.0)
    server = OperatorServer(FleetMetrics("unit"), tmp_path, "unit", dashboard=True, names=("fleet.example",))
    server.start()
    yield server
    server.close()


def _get(port: int, host: str | None = None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.putrequest("GET", "/metrics", skip_host=host is not None)
    if host is not None:
        connection.putheader("Host", host)
    connection.endheaders()
    status = connection.getresponse().status
    connection.close()
    return status


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_request_that_names_another_site_is_refused(endpoint: OperatorServer) -> None:
    port = endpoint.port
    assert [_get(port, h) for h in (f"127.0.0.1:{port}", "localhost", "[::1]:9", "fleet.example:80")] == [200] * 4
    assert [_get(port, h) for h in ("attacker.example", f"attacker.example:{port}", "")] == [421] * 3
    assert allowed_host("LOCALHOST:1", frozenset()) and not allowed_host(None, frozenset())


def test_idle_and_slow_clients_are_cut_off_and_leave_nothing_behind(endpoint: OperatorServer) -> None:
    # Prepare
    port = endpoint.port
    baseline = _fds()
    # Execute: more idle connections than the endpoint serves at once, and a slowloris
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3 * _dashboard.MAX_CONNECTIONS)]
    slow = socket.create_connection(("127.0.0.1", port))
    slow.sendall(b"GET /metrics HTTP/1.1\r\n")
    started = time.monotonic()
    cut = False
    while time.monotonic() - started < 10:
        try:
            slow.sendall(b"X-a: b\r\n")
        except OSError:
            cut = True
            break
        time.sleep(0.5)
    # Assert: the slow client was cut off at the deadline, the idle ones past the cap at once
    assert cut and time.monotonic() - started < 6
    closed = 0
    for connection in idle:
        connection.settimeout(5)
        try:
            closed += connection.recv(1) == b""
        except OSError:
            closed += 1
        connection.close()
    slow.close()
    assert closed == len(idle) and endpoint._server.refused >= 2 * _dashboard.MAX_CONNECTIONS - 1
    # and the endpoint answers again, its threads and descriptors back where they were
    assert _get(port) == 200
    deadline = time.monotonic() + 10
    while _fds() > baseline and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _fds() <= baseline
