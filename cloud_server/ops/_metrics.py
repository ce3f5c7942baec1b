"""The fleet as Prometheus metrics (prometheus-client), fed by the coordinator's hooks in the serve loop.

Counters that the journal also keeps (rounds closed, updates accepted, messages
rejected by reason) start from the journal's totals, so they count the fleet's
whole life, across server restarts, and a scrape can be checked against the
SQLite journal. Everything is updated in the serve loop's thread; the HTTP
server only reads (prometheus-client's metrics are thread-safe).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ..rounds._coordinator import Coordinator, RoundHooks, RoundResult
from ..rounds._failures import failure_summary
from ..rounds._journal_reader import JournalReader

__all__ = ["FleetMetrics"]


def _number(value: object) -> float:
    """A report's figure as a non-negative number (0 for anything else: a report is read back from the state)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else 0.0


_Metric = TypeVar("_Metric", Counter, Gauge)
_ROUND_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)


class FleetMetrics:
    def __init__(self, fleet: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        counter, gauge = self._declaring(Counter), self._declaring(Gauge)
        self.rounds = counter("genfl_rounds", "Rounds closed (the fleet's life).")
        self.round_number = gauge("genfl_round", "The open round, or the last one closed.")
        self.round_seconds = Histogram("genfl_round_duration_seconds", "Seconds from a round's tasks to its new model.",
                                       buckets=_ROUND_BUCKETS, registry=self.registry)  # fmt: skip
        self.online = gauge("genfl_devices_online", "Devices online now (their retained state).")
        self.picked = gauge("genfl_devices_picked", "Devices given a task in the open (or last) round.")
        self.answered = gauge("genfl_devices_answered", "Devices whose update the open (or last) round took.")
        self.accepted = counter("genfl_updates_accepted", "Updates accepted into a round (the fleet's life).")
        self.rejected = counter("genfl_messages_rejected", "Messages refused, by reason (the fleet's life).", "reason")
        self.failures = counter("genfl_device_failures", "Rounds boards reported failed, by reason.", "reason")
        self.bytes = counter("genfl_bytes", "Payload bytes through the broker (up: from devices).", "direction")
        self.generator_seconds = counter("genfl_generator_seconds", "Server seconds spent on GenFL's generator.")
        self.accuracy = gauge("genfl_accuracy", "Test accuracy of the global model (when the server evaluates).")
        self.device_accuracy = gauge("genfl_device_accuracy", "The round's model on the devices' data (weighted).")
        # GenFL: what each round sent of synthetic data (from the strategy's round report)
        self.synthetic_rounds = counter("genfl_synthetic_rounds", "Rounds by whether they sent synthetic data.", "sent")
        self.synthetic_images = counter("genfl_synthetic_images", "Synthetic images sent to devices.")
        self.synthetic_bytes = counter("genfl_synthetic_bytes", "Synthetic data bytes sent to devices.")
        self.synthetic_weight = gauge("genfl_synthetic_weight", "The synthetic loss weight of the last round.")
        self.pool_quality = gauge("genfl_pool_quality", "A pool's recognised share over the devices' own (0..1).")
        self.epsilon = gauge("genfl_privacy_epsilon", "Client-level DP: the epsilon the run has spent (at its delta).")
        self.on_release = gauge("genfl_devices_on_release", "Online devices by the model release they run.", "release")
        self.broker = gauge("genfl_broker_node", "1 for the broker node the server is connected to.", "node")
        self.failovers = gauge("genfl_broker_failovers", "Times the server moved to another broker node.")
        self.info = gauge("genfl_fleet_info", "The fleet this server serves.", "fleet")
        self.info.labels(fleet=fleet).set(1)
        self._rejected_seen: dict[str, int] = {}
        self._releases_seen: set[str] = set()  # the release labels set so far (a release nobody runs goes to 0)
        self._failure_labels: set[str] = set()
        self._bytes_seen = [0, 0]  # received (up), sent (down)
        self._node: str | None = None

    def _declaring(self, kind: type[_Metric]) -> Callable[..., _Metric]:
        """A maker of ``kind`` metrics in this registry: ``make(name, help, *label_names)``."""

        def make(name: str, text: str, *labels: str) -> _Metric:
            return kind(name, text, labels, registry=self.registry)

        return make

    def seed_from_journal(self, state_dir: Path) -> None:
        """Start the lifetime counters at the journal's totals (a resumed fleet)."""
        journal = JournalReader(state_dir)
        if not journal.exists():
            return  # no journal, or one without its tables yet: nothing to carry over
        rounds = journal.rounds()
        closed = [r for r in rounds if r.closed is not None]
        self.rounds.inc(len(closed))
        self.accepted.inc(len(journal.updates()))
        for row in closed:
            if row.seconds is not None:
                self.round_seconds.observe(row.seconds)
            self._count_report(row.report)
        if any(r.bytes_up is not None for r in closed):  # a journal from before rounds kept their traffic: none
            self.bytes.labels(direction="up").inc(max(0, sum(r.bytes_up or 0 for r in closed)))
            self.bytes.labels(direction="down").inc(max(0, sum(r.bytes_down or 0 for r in closed)))
        for failure in journal.failures():
            self._count_failure(failure_summary(failure.reason, failure.device_id), 1)
        for reason, count in journal.rejected().items():
            self.rejected.labels(reason=reason).inc(count)
        if rounds:
            self.round_number.set(rounds[-1].round)

    def _count_report(self, report: dict[str, object] | None) -> None:
        """A round's synthetic-data figures into the lifetime counters (rounds without a report: none), and the
        privacy it left spent."""
        if report is not None and "dp_epsilon" in report:
            self.epsilon.set(_number(report["dp_epsilon"]))
        if report is None or "sent" not in report:
            return
        self.synthetic_rounds.labels(sent="yes" if report["sent"] else "no").inc()
        self.synthetic_images.inc(_number(report.get("images")))
        self.synthetic_bytes.inc(_number(report.get("bytes")))

    def start_counting(self, coordinator: Coordinator) -> None:
        """What the coordinator rejected before now is in the journal already (seeded): count from here."""
        self._rejected_seen = dict(coordinator.rejected)

    # -- coordinator hooks ------------------------------------------------------------------

    def round_opened(self, number: int, picked: int) -> None:
        self.round_number.set(number)
        self.picked.set(picked)
        self.answered.set(0)

    def update_accepted(self, device_id: str) -> None:
        self.accepted.inc()
        self.answered.inc()

    def _count_failure(self, reason: str, count: int) -> None:
        """Reasons come from boards: at most 20 distinct labels, the rest counted as "other"."""
        label = reason[:80]
        if label not in self._failure_labels:
            if len(self._failure_labels) >= 20:
                label = "other"
            self._failure_labels.add(label)
        self.failures.labels(reason=label).inc(count)

    def hooks(self) -> RoundHooks:
        """What the coordinator tells these metrics as rounds go."""
        return RoundHooks(self.round_opened, self.update_accepted, self.round_closed)

    def round_closed(self, result: RoundResult) -> None:
        for reason, count in result.failures.items():
            self._count_failure(reason, count)
        self.rounds.inc()
        self.round_seconds.observe(result.seconds)
        self.generator_seconds.inc(_number(result.metrics.get("generator_s")))
        if result.accuracy is not None:
            self.accuracy.set(result.accuracy)
        if result.device_accuracy is not None:
            self.device_accuracy.set(result.device_accuracy)
        report = result.metrics or None
        self._count_report(report)
        if report is not None and "sent" in report:
            self.synthetic_weight.set(_number(report.get("weight")))
            if report.get("pool_quality") is not None:
                self.pool_quality.set(_number(report["pool_quality"]))

    # -- each pass of the serve loop --------------------------------------------------------

    def observe(self, coordinator: Coordinator, *, bytes_received: int, bytes_sent: int, node: str | None = None,
                failovers: int = 0) -> None:  # fmt: skip
        online = coordinator.online_devices()
        self.online.set(len(online))
        running = Tally(str(coordinator.devices[d].release or "none") for d in online)
        for release in set(self._releases_seen) | set(running):
            self.on_release.labels(release=release).set(running.get(release, 0))
        self._releases_seen.update(running)
        for reason, count in coordinator.rejected.items():
            new = count - self._rejected_seen.get(reason, 0)
            if new > 0:
                self.rejected.labels(reason=reason).inc(new)
                self._rejected_seen[reason] = count
        up, down = bytes_received - self._bytes_seen[0], bytes_sent - self._bytes_seen[1]
        if up > 0:
            self.bytes.labels(direction="up").inc(up)
        if down > 0:
            self.bytes.labels(direction="down").inc(down)
        self._bytes_seen = [bytes_received, bytes_sent]
        if node != self._node:
            if self._node is not None:
                self.broker.remove(self._node)
            if node is not None:
                self.broker.labels(node=node).set(1)
            self._node = node
        self.failovers.set(failovers)
