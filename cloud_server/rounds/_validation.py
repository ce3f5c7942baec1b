"""What the coordinator checks of a device's message before it changes anything: pure functions that return what
passed or raise ProtocolError (whose reason the coordinator counts and, for an update, acknowledges)."""

from __future__ import annotations

import collections
import math

from protocol import DeviceState, ProtocolError, TensorDict, Update, decode_delta

from ..learning._aggregation import WeightedDeltaSum, check_update_shapes, l2_norm
from ._config import DeviceRecord
from ._round import OpenRound

__all__ = ["RateLimit", "check_fresh_state", "check_round", "check_state", "validated_delta"]


def check_round(current: OpenRound | None, device_id: str, claimed_device: str, round_number: int) -> OpenRound:
    """The open round a device's message on ``device_id``'s topic belongs to, if it may speak of it."""
    if claimed_device != device_id:
        raise ProtocolError("wrong-device", f"message for {claimed_device} on {device_id}'s topic")
    if current is None or round_number != current.number:
        raise ProtocolError("closed-round", f"round {round_number}")
    if device_id not in current.configs:
        raise ProtocolError("not-selected", f"{device_id} was not picked for round {round_number}")
    return current


def check_state(device_id: str, state: DeviceState, num_classes: int) -> None:
    """A device's state on its own topic, with label counts (if any) of the fleet's classes adding up."""
    if state.device_id != device_id:
        raise ProtocolError("wrong-device", f"state for {state.device_id} on {device_id}'s topic")
    if state.label_counts is None:
        return
    if len(state.label_counts) != num_classes:
        raise ProtocolError("bad-label-counts", f"{device_id} counts {len(state.label_counts)} classes, "
                            f"the fleet has {num_classes}")  # fmt: skip
    total = math.fsum(state.label_counts)
    if min(state.label_counts) < 0 or abs(total - state.num_samples) > 0.01 * state.num_samples + 1:
        raise ProtocolError("bad-label-counts", f"{device_id}'s counts add up to {total:.0f}, "
                            f"not its {state.num_samples} samples")  # fmt: skip


_SESSIONS_KEPT = 8  # runs of a device whose state numbers are remembered


def check_fresh_state(record: DeviceRecord, state: DeviceState) -> None:
    """Refuse a replayed state, then note this one as seen. A state numbered no higher than one taken of the
    same run is a replay; a will (number 0) is taken only from the run the device's latest "online" came from,
    once. States without numbers (older agents) are taken as they come."""
    if state.session is None or state.sequence is None:
        return
    if state.sequence > 0:
        if state.sequence <= record.sessions.get(state.session, 0):
            raise ProtocolError("replayed-state", f"{record.device_id}'s state {state.sequence} again")
        record.sessions.pop(state.session, None)  # to the end: the most recent run
        record.sessions[state.session] = state.sequence
        while len(record.sessions) > _SESSIONS_KEPT:
            del record.sessions[next(iter(record.sessions))]
        record.session, record.will_taken = state.session, False
        return
    if record.session not in (None, state.session) or (record.will_taken and record.session == state.session):
        raise ProtocolError("replayed-state", f"{record.device_id}'s will of another run, or again")
    record.session, record.will_taken = state.session, True


def validated_delta(
    update: Update,
    codec: str,
    weight: int,
    global_id: str,
    global_state: TensorDict,
    max_norm: float | None,
) -> tuple[TensorDict, float]:
    """Decode and check an update against the global model: its delta and L2 norm, or ProtocolError."""
    if update.base_model_id != global_id:
        raise ProtocolError("stale-base", f"update built on {update.base_model_id[:12]}")
    if update.codec != codec:
        raise ProtocolError("wrong-codec", f"update in {update.codec}, the task asked for {codec}")
    delta = decode_delta(update.delta, update.codec, global_state)
    check_update_shapes(global_state, delta)
    WeightedDeltaSum.check_addable(delta, weight)  # what the round's sum would refuse, refused now
    norm = l2_norm(delta)
    if max_norm is not None and norm > max_norm:
        raise ProtocolError("norm-too-large", f"norm {norm:.3g} > {max_norm:.3g}")
    return delta, norm


class RateLimit:
    """At most ``count`` messages per sender in any ``window_s`` seconds (a sliding window): what one device
    may make the coordinator do for it."""

    def __init__(self, count: int, window_s: float) -> None:
        self.count = count
        self.window_s = window_s
        self._times: dict[str, collections.deque[float]] = {}

    def allow(self, sender: str, now: float) -> bool:
        if len(self._times) > 4096:  # senders come and go: keep only those heard from within the window
            self._times = {s: t for s, t in self._times.items() if t and now - t[-1] < self.window_s}
        times = self._times.setdefault(sender, collections.deque())
        while times and now - times[0] >= self.window_s:
            times.popleft()
        if len(times) >= self.count:
            return False
        times.append(now)
        return True
