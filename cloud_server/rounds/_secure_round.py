"""One round under secure aggregation, as the coordinator runs it: its phases, their deadlines, its frames.

    keys     the picked devices advertise two public keys on taking their task (until all did, or
             ``phase_s`` after the round opened); those that did are the round's participants
    shares   each participant gets the roster (the graph, the threshold, its neighbours' keys) and sends
             its secrets' shares sealed for its neighbours (until all did, or ``phase_s``)
    input    each one that shared gets what its neighbours sealed for it, trains, and sends its masked
             update (until all did, or the round's timeout, counted from its opening)
    unmask   each one whose masked update came is told who came and who dropped, and answers with its
             shares of the others' secrets (until all did, every secret has its threshold of shares, or
             ``phase_s``)

Then the sum is unmasked, or the round fails without unmasking anything (too few devices in any phase,
too few shares). Nothing of it is journalled: a server restarted mid-round fails it (the secrets were in
memory, on both sides). :class:`SecAggAggregator` does the arithmetic; this is its clock and its mail.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from protocol import (
    GenflError,
    MaskedUpdate,
    ProtocolError,
    SecAggForward,
    SecAggKeys,
    SecAggRoster,
    SecAggShares,
    SecAggUnmask,
    UnmaskRequest,
)
from protocol.secagg import SecAggAggregator, SecAggFailed, SecAggParams, SummedUpdate, summed_update, vector_length

__all__ = ["MIN_PARTICIPANTS", "SecAggFrame", "SecureRound"]

log = logging.getLogger("genfl.server")

# A sum of two tells each of the two the other's update: a secure round needs at least three participants.
MIN_PARTICIPANTS = 3

Phase = Literal["keys", "shares", "input", "unmask", "done", "failed"]
Outgoing = list[tuple[str, SecAggRoster | SecAggForward | UnmaskRequest]]
SecAggFrame = SecAggKeys | SecAggShares | MaskedUpdate | SecAggUnmask


@dataclass
class _Deadlines:
    opened: float
    phase_s: float
    input_s: float  # the round's timeout: training happens in the input phase


class SecureRound:
    def __init__(self, context: str, round_number: int, picked: list[str], template: Mapping[str, np.ndarray],
                 opened: float, phase_s: float, round_timeout_s: float) -> None:  # fmt: skip
        self.context = context
        self.round = round_number
        self.picked = frozenset(picked)
        self.template = template
        self.length = vector_length(template)
        self.phase: Phase = "keys"
        self.failure: str | None = None
        self.summed: SummedUpdate | None = None
        self._deadlines = _Deadlines(opened, phase_s, round_timeout_s)
        self._phase_started = opened
        self._keys: dict[str, tuple[bytes, bytes]] = {}
        self._aggregator: SecAggAggregator | None = None
        self._unmask_asked: set[str] = set()

    # -- what devices send -------------------------------------------------------------------------

    def receive(self, device_id: str, frame: SecAggFrame) -> None:
        """A device's frame of this round (ProtocolError if it is out of turn; a repeat is ignored)."""
        if frame.device_id != device_id:
            raise ProtocolError("wrong-device", f"a frame of {frame.device_id} on {device_id}'s topic")
        if frame.round != self.round:
            raise ProtocolError("closed-round", f"round {frame.round}, this one is {self.round}")
        if device_id not in self.picked:
            raise ProtocolError("not-selected", f"{device_id} is not in round {self.round}")
        if isinstance(frame, SecAggKeys):
            self._on_keys(device_id, frame)
            return
        aggregator = self._aggregator
        if aggregator is None:
            raise ProtocolError("secagg-order", f"{device_id}: a {frame.TYPE} before the roster")
        if isinstance(frame, SecAggShares):
            if self.phase != "shares":
                self._repeat_or_late(device_id, device_id in aggregator.shared, frame.TYPE)
                return
            aggregator.add_shares(device_id, frame.sealed)
        elif isinstance(frame, MaskedUpdate):
            if self.phase != "input" or device_id in aggregator.sent:
                self._repeat_or_late(device_id, device_id in aggregator.sent, frame.TYPE)
                return
            if len(frame.words) != 8 * self.length:
                raise ProtocolError("bad-shape", f"{device_id}: {len(frame.words) // 8} words, {self.length} expected")
            aggregator.add_masked(device_id, np.frombuffer(frame.words, dtype="<u8").astype(np.uint64))
        else:
            if self.phase != "unmask" or device_id not in self._unmask_asked:
                self._repeat_or_late(device_id, self.phase == "unmask", frame.TYPE)
                return
            aggregator.add_unmask(device_id, frame.shares)
            self._unmask_asked.discard(device_id)

    def _on_keys(self, device_id: str, frame: SecAggKeys) -> None:
        keys = (frame.cipher_key, frame.mask_key)
        if device_id in self._keys:
            if self._keys[device_id] != keys:  # a re-sent task answered again: the same keys, or none
                raise ProtocolError("secagg-order", f"{device_id}: other keys for the same round")
            return
        if self.phase != "keys":
            raise ProtocolError("secagg-late", f"{device_id}: keys after the roster went out")
        self._keys[device_id] = keys

    def _repeat_or_late(self, device_id: str, repeat: bool, kind: str) -> None:
        if not repeat:
            raise ProtocolError("secagg-late", f"{device_id}: a {kind} in the {self.phase} phase")

    # -- the clock ---------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.phase in ("done", "failed")

    @property
    def survivors(self) -> frozenset[str]:
        """Whose masked update is in the sum (once unmasked)."""
        return self.sent_masked if self.phase == "done" else frozenset()

    @property
    def sent_masked(self) -> frozenset[str]:
        return frozenset(self._aggregator.sent) if self._aggregator is not None else frozenset()

    def step(self, now: float, gone: frozenset[str] = frozenset()) -> Outgoing:
        """Move on when a phase is complete or its deadline passed; the frames that go out. ``gone``: devices
        the round need not wait for (they reported a failure)."""
        outgoing: Outgoing = []
        try:
            while not self.finished:
                moved = self._advance(now, gone, outgoing)
                if not moved:
                    break
        except (SecAggFailed, GenflError) as exc:
            self._fail(str(exc))
        return outgoing

    def _due(self, now: float, waited_for: set[str], have: set[str], limit_s: float) -> bool:
        return waited_for <= have or now - self._phase_started >= limit_s

    def _advance(self, now: float, gone: frozenset[str], outgoing: Outgoing) -> bool:
        d = self._deadlines
        if self.phase == "keys":
            if not self._due(now, set(self.picked - gone), set(self._keys), d.phase_s):
                return False
            advertised = sorted(self._keys)
            if len(advertised) < MIN_PARTICIPANTS:
                raise SecAggFailed(f"{len(advertised)} devices advertised keys, {MIN_PARTICIPANTS} needed")
            params = SecAggParams.for_round(self.context, advertised, self.length)
            self._aggregator = fresh = SecAggAggregator(params)
            for device_id in advertised:
                fresh.add_keys(device_id, *self._keys[device_id])
            for device_id in advertised:
                keys = fresh.roster(device_id)
                outgoing.append((device_id, SecAggRoster(self.round, device_id, params.participants, params.degree,
                                                         params.threshold, params.length, keys)))  # fmt: skip
            log.info("round %d: secure aggregation of %d devices (degree %d, threshold %d)", self.round,
                     len(advertised), params.degree, params.threshold)  # fmt: skip
            return self._enter("shares", now)
        aggregator = self._aggregator
        assert aggregator is not None
        threshold = aggregator.params.threshold
        if self.phase == "shares":
            if not self._due(now, set(aggregator.keys) - gone, aggregator.shared, d.phase_s):
                return False
            if len(aggregator.shared) < threshold:
                raise SecAggFailed(f"{len(aggregator.shared)} devices shared their secrets, {threshold} needed")
            for device_id in sorted(aggregator.shared):
                outgoing.append((device_id, SecAggForward(self.round, device_id, aggregator.forwarded(device_id))))
            return self._enter("input", now)
        if self.phase == "input":
            waited = now - d.opened >= d.input_s
            if not (aggregator.shared - gone <= aggregator.sent or waited):
                return False
            survivors, dropped = aggregator.unmask_request()  # SecAggFailed below the threshold
            for device_id in survivors:
                outgoing.append((device_id, UnmaskRequest(self.round, device_id, tuple(survivors), tuple(dropped))))
            self._unmask_asked = set(survivors)
            if dropped:
                log.info("round %d: %d devices shared but sent no masked update; their masks are recovered",
                         self.round, len(dropped))  # fmt: skip
            return self._enter("unmask", now)
        if self.phase == "unmask":
            # done once every secret has its threshold of shares: the survivors that dropped since their masked
            # input cost no deadline when their neighbours answered for them
            waiting = self._unmask_asked - gone and not aggregator.can_unmask
            if waiting and now - self._phase_started < d.phase_s:
                return False
            self.summed = summed_update(aggregator.result(), self.template)  # SecAggFailed: too few shares
            self.phase = "done"
            return False
        return False

    def _enter(self, phase: Phase, now: float) -> bool:
        self.phase = phase
        self._phase_started = now
        return True

    def abandon(self, reason: str) -> None:
        """Fail the round now (a revoked device's masked update is in the sum, the server restarted)."""
        if not self.finished:
            self._fail(reason)

    def _fail(self, reason: str) -> None:
        self.phase = "failed"
        self.failure = reason
        log.warning("round %d: secure aggregation failed, nothing unmasked: %s", self.round, reason)
