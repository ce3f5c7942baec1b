"""The operator page and the metrics, without a server: what they show for the rows they are given."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from cloud_server.ops._dashboard import render_page
from cloud_server.ops._fleet_view import fleet_rows, round_rows
from cloud_server.ops._metrics import FleetMetrics
from cloud_server.rounds._journal import ClosedRound


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
    from cloud_server import DeviceRecord

    class Coordinator:  # what FleetMetrics reads of one
        def __init__(self) -> None:
            self.rejected = {"replay": 2}
            self.devices = {"a": DeviceRecord("a", True, 5, None, release=3), "b": DeviceRecord("b", True, 5, None)}

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
    assert sample("genfl_devices_on_release", {"release": "3"}) == 1
    assert sample("genfl_devices_on_release", {"release": "none"}) == 1
    assert sample("genfl_broker_node", {"node": "mqtt://b:2"}) == 1
    assert sample("genfl_broker_node", {"node": "mqtt://a:1"}) is None
    assert sample("genfl_broker_failovers") == 1


def test_an_operator_sees_what_genfl_sent_each_round_and_the_fleets_classes() -> None:
    # Prepare: two rounds' reports as the journal keeps them, one that sent synthetic data and one that did not
    from cloud_server.rounds._coordinator import RoundResult

    sent = {"round": 2, "source": "pool /srv/pool", "sent": True, "why_not": "", "devices": 10, "images": 2287,
            "bytes": 7045880, "weight": 0.78, "harm_check": 1.0, "pool_quality": 0.78, "fleet_agreement": None,
            "recognised": 0.27}  # fmt: skip
    skipped = {"round": 1, "source": "data-free", "sent": False, "why_not": "warm-up round <1>", "devices": 0,
               "images": 0, "bytes": 0, "weight": 0.0, "harm_check": 1.0, "pool_quality": None,
               "fleet_agreement": None, "recognised": None}  # fmt: skip
    rounds = [{"round": r["round"], "started": 0.0, "closed": 1.0, "accepted": 10, "failed": 0, "timed_out": False,
               "accuracy": 0.3, "train_loss": 0.1, "report": r} for r in (skipped, sent)]  # fmt: skip
    # Execute
    page = render_page("f", [_device("a", classes_held=["cat", "dog"])], rounds, classes=("ant", "cat", "dog"))
    metrics = FleetMetrics("f")
    for report in (skipped, sent):
        number = int(report["round"])  # type: ignore[call-overload]
        metrics.round_closed(RoundResult(round=number, selected=10, devices=10, accuracy=0.3, loss=1.0, train_loss=0.1,
                                         seconds=5.0, bytes_up=1, bytes_down=1, metrics=report))  # fmt: skip
    # Assert: the page's synthetic table, the classes, what a device holds; the counters
    assert '<p id="classes">classes: ant, cat, dog</p>' in page and '<td class="held">cat, dog</td>' in page
    assert '<tr data-round="2"><td>2</td><td>pool /srv/pool</td><td>2287 images, 6881 KiB to 10 devices</td>' in page
    assert "none: warm-up round &lt;1&gt;" in page
    sample = metrics.registry.get_sample_value
    assert sample("genfl_synthetic_rounds_total", {"sent": "yes"}) == 1
    assert sample("genfl_synthetic_rounds_total", {"sent": "no"}) == 1
    assert sample("genfl_synthetic_images_total") == 2287 and sample("genfl_synthetic_weight") == 0.78
    assert sample("genfl_pool_quality") == 0.78


def test_the_synthetic_counters_start_from_the_rounds_the_journal_kept(tmp_path: Path) -> None:
    # Prepare: a state whose two closed rounds sent synthetic data once, and a hostile report
    from cloud_server import SqliteJournal
    from protocol import TrainConfig, encode_tensors

    journal = SqliteJournal(tmp_path)
    blob = encode_tensors({"w": np.zeros(2, np.float32)})
    journal.start("toy", "f", blob, ("a", "b"))
    reports = [{"sent": True, "images": 40, "bytes": 1000}, {"sent": False, "images": 0, "bytes": 0},
               {"sent": True, "images": "many", "bytes": -5}]  # fmt: skip
    for number, report in enumerate(reports, start=1):
        journal.round_opened(number, 0.0, "m", {"d": TrainConfig()}, None)
        journal.round_closed(number, ClosedRound(blob, "m", timed_out=False, accuracy=None, loss=None,
                             train_loss=0.0, report=report))  # fmt: skip
    journal.close()
    # Execute
    metrics = FleetMetrics("f")
    metrics.seed_from_journal(tmp_path)
    # Assert: what the journal holds, a figure that is not a count counting as none
    sample = metrics.registry.get_sample_value
    assert sample("genfl_synthetic_rounds_total", {"sent": "yes"}) == 2
    assert sample("genfl_synthetic_rounds_total", {"sent": "no"}) == 1
    assert sample("genfl_synthetic_images_total") == 40 and sample("genfl_synthetic_bytes_total") == 1000


def test_after_a_restart_round_durations_and_failures_start_from_the_journal(tmp_path: Path) -> None:
    # Prepare: five closed rounds of 10 s; two boards failed round 5 for the same reason
    from cloud_server import SqliteJournal
    from protocol import TrainConfig, encode_tensors

    journal = SqliteJournal(tmp_path)
    blob = encode_tensors({"w": np.zeros(2, np.float32)})
    journal.start("toy", "f", blob, ("a", "b"))
    for number in range(1, 6):
        journal.round_opened(number, time.time() - 10.0, "m", {"cam-1": TrainConfig(), "cam-2": TrainConfig()}, None)
        if number == 5:
            for device in ("cam-1", "cam-2"):
                journal.failure_recorded(5, device, f"DataError: {device}'s data: images are 3x32x32")
        journal.round_closed(number, ClosedRound(blob, "m", timed_out=False, accuracy=None, loss=None,
                             train_loss=0.0, report=None, bytes_up=1000, bytes_down=3000))  # fmt: skip
    journal.close()
    # Execute
    metrics = FleetMetrics("f")
    metrics.seed_from_journal(tmp_path)
    # Assert: the histogram counts every closed round, as the rounds counter does; traffic; failures by reason
    sample = metrics.registry.get_sample_value
    assert sample("genfl_rounds_total") == 5 and sample("genfl_round_duration_seconds_count") == 5
    assert 50.0 <= sample("genfl_round_duration_seconds_sum") < 55.0
    assert sample("genfl_bytes_total", {"direction": "up"}) == 5000
    assert sample("genfl_bytes_total", {"direction": "down"}) == 15000
    reason = "DataError: <device>'s data: images are 3x32x32"
    assert sample("genfl_device_failures_total", {"reason": reason}) == 2


def test_the_page_shows_whom_the_open_round_waits_for_and_why_rounds_fell_short(tmp_path: Path) -> None:
    # Prepare: round 1 timed out without cam-2 and cam-3 failed it; round 2 is open, cam-1 has answered
    from cloud_server import SqliteJournal
    from protocol import TrainConfig, encode_tensors

    journal = SqliteJournal(tmp_path)
    blob = encode_tensors({"w": np.zeros(2, np.float32)})
    journal.start("toy", "f", blob, ("a", "b"))
    picked = {d: TrainConfig() for d in ("cam-1", "cam-2", "cam-3")}
    journal.round_opened(1, time.time() - 700, "m", picked, None)
    journal.failure_recorded(1, "cam-3", "Traceback ...\nDataError: cam-3's data: images are 3x32x32")
    journal.round_closed(1, ClosedRound(blob, "m", timed_out=True, accuracy=None, loss=None, train_loss=0.0))
    journal.round_opened(2, time.time() - 42, "m", {d: TrainConfig() for d in ("cam-1", "cam-2")}, None)
    from cloud_server.rounds._journal import AcceptedUpdate

    journal.update_accepted(2, AcceptedUpdate("cam-1", 10, 0.5, 0.5, 1.0, blob))
    journal.close()
    # Execute
    rounds = round_rows(tmp_path)
    page = render_page("f", [], rounds)
    # Assert
    assert rounds[-1]["waiting"] == ["cam-2"] and rounds[0]["waiting"] == ["cam-1", "cam-2"]
    assert "Round 2 open for 4" in page and "1 of 2 answered; waiting for cam-2" in page
    assert "timed out: cam-1, cam-2" in page
    assert "1 x DataError: &lt;device&gt;&#x27;s data: images are 3x32x32" in page


def test_an_operator_sees_the_privacy_a_private_run_has_spent() -> None:
    from cloud_server.rounds._coordinator import RoundResult

    reports = [{"dp_epsilon": eps, "dp_delta": 1e-5, "dp_noise_multiplier": 1.1, "dp_sampling_rate": 0.1}
               for eps in (0.42, 0.61)]  # fmt: skip
    rounds = [{"round": n, "started": 0.0, "closed": 1.0, "accepted": 10, "failed": 0, "timed_out": False,
               "accuracy": 0.3, "train_loss": 0.1, "report": r} for n, r in enumerate(reports, 1)]  # fmt: skip
    page = render_page("f", [_device("a")], rounds)
    plain = render_page("f", [_device("a")], [{**rounds[0], "report": None}])
    metrics = FleetMetrics("f")
    for number, report in enumerate(reports, 1):
        metrics.round_closed(RoundResult(round=number, selected=10, devices=10, accuracy=0.3, loss=1.0, train_loss=0.1,
                                         seconds=5.0, bytes_up=1, bytes_down=1, metrics=report))  # fmt: skip
    assert '<span id="privacy">privacy spent: epsilon 0.61 at delta 1e-05</span>' in page
    assert 'id="privacy"' not in plain
    assert metrics.registry.get_sample_value("genfl_privacy_epsilon") == 0.61


def test_an_operator_sees_which_release_each_board_runs_and_how_it_scored_there() -> None:
    page = render_page("f", [_device("a", release=2, release_score=0.912), _device("b")], [])
    assert '<tr data-device="a">' in page and '<td class="release">2 (0.912)</td>' in page
    assert '<td class="release">-</td>' in page
