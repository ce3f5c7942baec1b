"""The operator page and the metrics, without a server: what they show for the rows they are given."""

from __future__ import annotations

from pathlib import Path

from cloud_server._dashboard import render_page
from cloud_server._fleet_view import fleet_rows, round_rows
from cloud_server._metrics import FleetMetrics


def _device(device_id: str, **extra: object) -> dict[str, object]:
    row: dict[str, object] = {"device_id": device_id, "online": True, "last_seen": 1.7e9, "rounds": 2,
                              "last_update_norm": 1.5, "last_update_accuracy": 0.75, "enrolled": None,
                              "revoked": False}  # fmt: skip
    row.update(extra)
    return row


def test_the_page_escapes_what_devices_named_themselves_and_draws_one_point_per_evaluated_round() -> None:
    rounds = [{"round": n, "started": 0.0, "closed": 1.0, "accepted": 2, "failed": 0, "timed_out": False,
               "accuracy": acc, "train_loss": 0.1} for n, acc in ((1, 0.5), (2, None), (3, 0.9))]  # fmt: skip
    page = render_page("f<1>", [_device("<script>x</script>"), _device("b", online=False, revoked=True)], rounds)
    assert "<script>" not in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page
    assert "Fleet f&lt;1&gt;" in page
    assert "1 of 2 devices online" in page and "3 rounds closed" in page and "accuracy 0.900" in page
    assert page.count("<circle") == 2
    assert '<td class="revoked">revoked</td>' in page


def test_an_empty_state_dir_is_an_empty_fleet_not_an_error(tmp_path: Path) -> None:
    assert fleet_rows(tmp_path) == [] and round_rows(tmp_path) == []
    (tmp_path / "state.sqlite3").write_bytes(b"not a database")
    assert fleet_rows(tmp_path) == [] and round_rows(tmp_path) == []
    page = render_page("f", [], [])
    assert "No device has connected yet" in page and "No accuracy yet" in page


def test_metrics_count_only_what_is_new_since_the_last_look() -> None:
    class Coordinator:  # what FleetMetrics reads of one
        def __init__(self) -> None:
            self.rejected = {"replay": 2}

        def online_devices(self) -> list[str]:
            return ["a", "b"]

    metrics = FleetMetrics("f")
    coordinator = Coordinator()
    metrics.start_counting(coordinator)  # type: ignore[arg-type]
    coordinator.rejected = {"replay": 5, "bad-frame": 1}
    metrics.observe(coordinator, bytes_received=100, bytes_sent=40, node="mqtt://a:1")  # type: ignore[arg-type]
    metrics.observe(coordinator, bytes_received=150, bytes_sent=40, node="mqtt://b:2", failovers=1)  # type: ignore[arg-type]
    sample = metrics.registry.get_sample_value
    assert sample("genfl_messages_rejected_total", {"reason": "replay"}) == 3
    assert sample("genfl_messages_rejected_total", {"reason": "bad-frame"}) == 1
    assert sample("genfl_bytes_total", {"direction": "up"}) == 150
    assert sample("genfl_bytes_total", {"direction": "down"}) == 40
    assert sample("genfl_devices_online") == 2
    assert sample("genfl_broker_node", {"node": "mqtt://b:2"}) == 1
    assert sample("genfl_broker_node", {"node": "mqtt://a:1"}) is None
    assert sample("genfl_broker_failovers") == 1
