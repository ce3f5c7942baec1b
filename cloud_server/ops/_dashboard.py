"""The operator's HTTP endpoint: ``/metrics`` for Prometheus and, with ``--dashboard``, a read-only page.

One small threaded server from the standard library. ``/metrics`` is
prometheus-client's exposition of :class:`FleetMetrics`; ``/`` is the fleet
table (the rows of ``genfl-server devices list``) and the accuracy curve, as
plain HTML with an inline SVG drawn here (no scripts, nothing fetched from
elsewhere, so it works on an air-gapped site), refreshed every few seconds;
``/fleet.json`` is the same data for scripts. Only GET and HEAD; nothing on
the page changes the fleet.
"""

from __future__ import annotations

import contextlib
import errno
import html
import ipaddress
import json
import logging
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from protocol import TransportError

from ._fleet_view import fleet_classes, fleet_rows, round_rows
from ._metrics import FleetMetrics

__all__ = ["OperatorServer", "render_page"]

log = logging.getLogger("genfl.dashboard")

# What one client may hold of the coordinator's process: the endpoint runs in it, so an idle or slow client
# (a slowloris) must not keep threads and file descriptors.
MAX_CONNECTIONS = 16  # connections answered at once; more are closed as they come
REQUEST_DEADLINE_S = 10.0  # a connection is closed this long after it was accepted, answered or not
ACCEPT_BACKOFF_S = 0.5  # out of file descriptors: wait this long before accepting again


def allowed_host(header: str | None, names: frozenset[str]) -> bool:
    """Whether a request's ``Host`` header names this server: an IP address, ``localhost`` or one of ``names``
    (a page of another site that resolves its own name to this address, DNS rebinding, names that site)."""
    if not header:
        return False
    host = header.strip().lower()
    if host.startswith("["):  # [v6]:port
        host = host[1 : host.find("]")] if "]" in host else ""
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host in names or host == "localhost"


class _BoundedServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a cap on connections, a deadline on each, and a pause when the process is out
    of file descriptors (accepting in a loop would spin and starve the coordinator)."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 128  # the listen backlog: a burst of connections is accepted (and refused) at once

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._open: dict[socket.socket, float] = {}  # connection -> monotonic time accepted
        self._lock = threading.Lock()
        self.refused = 0  # connections closed at once: all slots taken
        self._closed = threading.Event()
        super().__init__(address, handler)
        self._reaper = threading.Thread(target=self._reap, name="genfl-operator-reaper", daemon=True)
        self._reaper.start()

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                log.warning("operator endpoint: cannot accept (%s); pausing %.1f s", exc, ACCEPT_BACKOFF_S)
                time.sleep(ACCEPT_BACKOFF_S)
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        with self._lock:
            self._open[request] = time.monotonic()
        try:
            super().process_request(request, client_address)
        except Exception:  # no thread could start: the slot is free again
            self._forget(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._forget(request)

    def server_close(self) -> None:
        self._closed.set()
        super().server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone or cut off mid-answer is routine here (the deadline does it); anything else is logged."""
        if isinstance(sys.exc_info()[1], OSError):
            log.debug("operator endpoint: %s went away: %s", client_address, sys.exc_info()[1])
        else:
            log.exception("operator endpoint: answering %s failed", client_address)

    def _forget(self, request: socket.socket) -> None:
        with self._lock:
            if self._open.pop(request, None) is not None:
                self._slots.release()

    def _reap(self) -> None:
        """Close connections past their deadline: their handler's read or write ends, and its thread."""
        while not self._closed.wait(1.0):
            now = time.monotonic()
            with self._lock:
                late = [c for c, since in self._open.items() if now - since > REQUEST_DEADLINE_S]
            for connection in late:
                with contextlib.suppress(OSError):  # closed already
                    connection.shutdown(socket.SHUT_RDWR)


def _when(stamp: float | None) -> str:
    return "-" if stamp is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _curve_svg(rounds: list[dict[str, Any]], width: int = 560, height: int = 220) -> str:
    points = [(r["round"], r["accuracy"]) for r in rounds if r["accuracy"] is not None]
    if not points:
        return '<p class="empty">No accuracy yet: the server scores its model given a test set (--eval-dataset).</p>'
    left, right, top, bottom = 44, 12, 10, 30
    last = max(n for n, _ in points)
    first = min(n for n, _ in points)
    span = max(1, last - first)

    def x(n: int) -> float:
        return left + (n - first) / span * (width - left - right)

    def y(a: float) -> float:
        return top + (1.0 - a) * (height - top - bottom)

    grid = "".join(
        f'<line x1="{left}" y1="{y(v):.1f}" x2="{width - right}" y2="{y(v):.1f}" class="grid"/>'
        f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:g}</text>'
        for v in (0.0, 0.25, 0.5, 0.75, 1.0)
    )
    line = " ".join(f"{x(n):.1f},{y(a):.1f}" for n, a in points)
    dots = "".join(f'<circle cx="{x(n):.1f}" cy="{y(a):.1f}" r="3"><title>round {n}: {a:.3f}</title></circle>'
                   for n, a in points)  # fmt: skip
    bottom_y = height - 8
    labels = (
        f'<text x="{x(first):.1f}" y="{bottom_y}" text-anchor="middle">{first}</text>'
        f'<text x="{x(last):.1f}" y="{bottom_y}" text-anchor="middle">{last}</text>'
        f'<text x="{(left + width - right) / 2:.1f}" y="{bottom_y}" text-anchor="middle">round</text>'
    )
    return (
        f'<svg id="accuracy" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="test accuracy per round">{grid}<polyline points="{line}"/>{dots}{labels}</svg>'
    )


_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 24px; color: #1c2430; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 24px 0 8px; }
.summary span { display: inline-block; margin-right: 18px; }
table { border-collapse: collapse; } th, td { padding: 4px 10px; text-align: right; border-bottom: 1px solid #dde3ea; }
th:first-child, td:first-child { text-align: left; } th { background: #f1f4f8; }
td.online { color: #14804a; font-weight: 600; } td.offline { color: #8a94a3; } td.revoked { color: #b42318; }
svg text { font-size: 11px; fill: #566070; } svg .grid { stroke: #e6eaef; }
svg polyline { fill: none; stroke: #2563eb; stroke-width: 2; } svg circle { fill: #2563eb; }
.empty { color: #8a94a3; }
"""


def _release_text(release: object, score: object) -> str:
    """The release a board runs and its score there ("-" for none)."""
    if not isinstance(release, int):
        return "-"
    return f"{release} ({score:.3f})" if isinstance(score, float) else str(release)


def _synthetic_table(rounds: list[dict[str, Any]], last: int = 12) -> str:
    """GenFL's last rounds: what each sent of synthetic data, or why it ran as plain FedAvg ("" without GenFL)."""
    reports = [r["report"] for r in rounds if isinstance(r.get("report"), dict) and "sent" in r["report"]]
    if not reports:
        return ""
    rows = []
    for rep in reports[-last:]:

        def number(key: str, form: str, rep: dict[str, Any] = rep) -> str:
            value = rep.get(key)
            return "-" if value is None else format(value, form)

        what = (
            f"{rep.get('images', 0)} images, {rep.get('bytes', 0) / 1024:.0f} KiB to {rep.get('devices', 0)} devices"
            if rep.get("sent")
            else f"none: {rep.get('why_not', '')}"
        )
        rows.append(
            f'<tr data-round="{int(rep.get("round", 0))}"><td>{int(rep.get("round", 0))}</td>'
            f"<td>{html.escape(str(rep.get('source', '')))}</td><td>{html.escape(what)}</td>"
            f"<td>{number('weight', '.3f')}</td><td>{number('harm_check', '.2f')}</td>"
            f"<td>{number('pool_quality', '.2f')}</td><td>{number('recognised', '.2f')}</td></tr>"
        )
    return (
        '<h2>Synthetic data (GenFL)</h2><table id="synthetic"><thead><tr><th>round</th><th>source</th><th>sent</th>'
        "<th>weight</th><th>harm check</th><th>pool quality</th><th>recognised</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _rounds_table(rounds: list[dict[str, Any]], now: float, last: int = 10) -> str:
    """The open round (whom it waits for), then the last rounds: answers, who was left out, failures by reason."""
    open_round = next((r for r in reversed(rounds) if r["closed"] is None), None)
    if open_round is None:
        status = '<p id="open-round">No round is open.</p>'
    else:
        waiting = ", ".join(open_round.get("waiting", [])) or "nobody"
        age = max(0.0, now - open_round["started"])
        status = (
            f'<p id="open-round">Round {int(open_round["round"])} open for {age:.0f} s:'
            f" {len(open_round.get('picked', [])) - len(open_round.get('waiting', []))} of"
            f" {len(open_round.get('picked', []))} answered;"
            f" waiting for {html.escape(waiting)}</p>"
        )
    rows = []
    for r in [r for r in rounds if r["closed"] is not None][-last:]:
        left_out = ", ".join(r.get("waiting", [])) if r["timed_out"] else ""
        counts: dict[str, int] = {}
        for reason in r.get("failures", {}).values():
            counts[reason] = counts.get(reason, 0) + 1
        failed = "; ".join(f"{n} x {reason}" for reason, n in counts.items())
        number, picked = int(r["round"]), len(r.get("picked", []))
        rows.append(
            f'<tr data-round="{number}"><td>{number}</td><td>{r["accepted"]}/{picked}</td>'
            f'<td class="timed-out">{"timed out: " + html.escape(left_out) if r["timed_out"] else "-"}</td>'
            f'<td class="failures">{html.escape(failed) or "-"}</td></tr>'
        )
    table = (
        '<table id="rounds"><thead><tr><th>round</th><th>updates</th><th>timed out</th><th>failures</th></tr></thead>'
        "<tbody>" + "".join(rows) + "</tbody></table>"
    )
    return f"<h2>Rounds</h2>{status}{table if rows else ''}"


def render_page(fleet: str, devices: list[dict[str, Any]], rounds: list[dict[str, Any]], refresh_s: int = 5,
                classes: tuple[str, ...] | None = None) -> str:  # fmt: skip
    """The dashboard: a summary line, the fleet's classes, the fleet table and the accuracy curve."""
    online = sum(1 for d in devices if d["online"])
    closed = [r for r in rounds if r["closed"] is not None]
    accuracy = next((r["accuracy"] for r in reversed(closed) if r["accuracy"] is not None), None)
    rows = []
    for d in devices:
        state = "revoked" if d["revoked"] else ("online" if d["online"] else "offline")
        norm = "-" if d["last_update_norm"] is None else f"{d['last_update_norm']:.3g}"
        acc = "-" if d["last_update_accuracy"] is None else f"{d['last_update_accuracy']:.3f}"
        held = "-" if d.get("classes_held") is None else ", ".join(d["classes_held"])
        runs = _release_text(d.get("release"), d.get("release_score"))
        rows.append(
            f'<tr data-device="{html.escape(d["device_id"])}"><td>{html.escape(d["device_id"])}</td>'
            f'<td class="{state}">{state}</td><td>{_when(d["last_seen"])}</td><td>{d["rounds"]}</td>'
            f'<td>{norm}</td><td>{acc}</td><td class="held">{html.escape(held)}</td>'
            f'<td class="release">{runs}</td></tr>'
        )
    table = (
        '<table id="fleet"><thead><tr><th>device</th><th>state</th><th>last seen</th><th>rounds</th>'
        "<th>update norm</th><th>update acc</th><th>holds</th><th>runs release</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
        if rows
        else '<p class="empty">No device has connected yet.</p>'
    )
    spent = next((r["report"] for r in reversed(closed) if isinstance(r.get("report"), dict)
                  and isinstance(r["report"].get("dp_epsilon"), (int, float))), None)  # fmt: skip
    privacy = "" if spent is None else (
        f'<span id="privacy">privacy spent: epsilon {float(spent["dp_epsilon"]):.3g}'
        f' at delta {float(spent.get("dp_delta") or 0):.0e}</span>'
    )  # fmt: skip
    summary = (
        f'<p class="summary"><span id="online">{online} of {len(devices)} devices online</span>'
        f'<span id="rounds">{len(closed)} rounds closed</span>'
        f'<span id="last-accuracy">accuracy {"-" if accuracy is None else f"{accuracy:.3f}"}</span>{privacy}</p>'
    )
    synthetic = _synthetic_table(closed)
    rounds_html = _rounds_table(rounds, time.time())
    named = (
        f'<p id="classes">classes: {html.escape(", ".join(classes))}</p>'
        if classes
        else '<p id="classes">classes: not set yet</p>'
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{refresh_s}">'
        f"<title>genfl fleet {html.escape(fleet)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>Fleet {html.escape(fleet)}</h1>{summary}{named}<h2>Devices</h2>{table}{rounds_html}"
        f"<h2>Test accuracy per round</h2>{_curve_svg(closed)}{synthetic}</body></html>"
    )


class OperatorServer:
    """``/metrics`` always; ``/`` and ``/fleet.json`` when ``dashboard`` is on. Runs in a daemon thread."""

    def __init__(self, metrics: FleetMetrics, state_dir: Path, fleet: str, *, host: str = "127.0.0.1", port: int = 0,
                 dashboard: bool = False, names: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.metrics = metrics
        self.state_dir = state_dir
        self.fleet = fleet
        self.dashboard = dashboard
        # the names a request's Host may give besides IP addresses and localhost: this machine's, and ``names``
        self.names = frozenset(n.lower() for n in (*names, host, socket.gethostname(), socket.getfqdn()) if n)
        handler = self._handler_class()
        try:
            self._server = _BoundedServer((host, port), handler)
        except OSError as exc:
            raise TransportError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
        self._thread = threading.Thread(target=self._server.serve_forever, name="genfl-operator-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics%s", self._server.server_address[0], self.port,
                 " and the dashboard on /" if self.dashboard else "")  # fmt: skip

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "genfl-server"
            sys_version = ""
            timeout = REQUEST_DEADLINE_S  # each read and write; the server closes the connection at the deadline

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("%s %s", self.address_string(), format % args)

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, *, body: bool) -> None:
                path = self.path.split("?", 1)[0]
                if not allowed_host(self.headers.get("Host"), owner.names):
                    self.send_error(HTTPStatus.MISDIRECTED_REQUEST, "unknown Host (give serve --metrics-name NAME)")
                    return
                try:
                    if path == "/metrics":
                        payload, kind = generate_latest(owner.metrics.registry), CONTENT_TYPE_LATEST
                    elif owner.dashboard and path in ("/", "/index.html"):
                        page = render_page(owner.fleet, fleet_rows(owner.state_dir), round_rows(owner.state_dir),
                                           classes=fleet_classes(owner.state_dir))  # fmt: skip
                        payload, kind = page.encode(), "text/html; charset=utf-8"
                    elif owner.dashboard and path == "/fleet.json":
                        classes = fleet_classes(owner.state_dir)
                        data = {
                            "fleet": owner.fleet,
                            "classes": None if classes is None else list(classes),
                            "devices": fleet_rows(owner.state_dir),
                            "rounds": round_rows(owner.state_dir),
                        }
                        payload, kind = json.dumps(data).encode(), "application/json"
                    else:
                        self.send_error(HTTPStatus.NOT_FOUND)
                        return
                except Exception:  # a bad read must not take the server down; the next request tries again
                    log.exception("could not answer %s", path)
                    self.send_error(HTTPStatus.INTERNAL_SERVER_ERROR)
                    return
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
                self.end_headers()
                if body:
                    self.wfile.write(payload)

        return Handler
