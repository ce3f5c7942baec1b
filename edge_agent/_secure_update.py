"""This board's side of one secure-aggregation round (the server's is ``cloud_server.rounds._secure_round``).

On the task it makes its keys and advertises them; on the roster it shares its secrets with its neighbours;
once it has trained and its neighbours' shares came, it sends its update masked, never in the clear; asked
to help unmask, it answers once. The secrets live in this object only: never on disk, so a board that
restarts mid-round drops out of it (its neighbours' shares cover for it) and cannot be made to reveal them.
"""

from __future__ import annotations

import secrets

import numpy as np

from protocol import (
    MaskedUpdate,
    ProtocolError,
    SecAggForward,
    SecAggKeys,
    SecAggRoster,
    SecAggShares,
    SecAggUnmask,
    Task,
    UnmaskRequest,
    Update,
    clip_update,
    decode_delta,
    decode_tensors,
    noise_share,
)
from protocol.secagg import SecAggDevice, SecAggParams, round_context, update_words

__all__ = ["SecureUpdate"]


class SecureUpdate:
    def __init__(self, device_id: str, fleet: str, task: Task, num_samples: int) -> None:
        self.device_id = device_id
        self.round = task.round
        self.model_id = task.model_id
        cap = task.config.weight_cap
        self.config = task.config
        if task.config.clip_norm is not None:
            self.weight = 1  # DP-FedAvg: every update counts the same, so that one board moves the sum by <= clip
        else:
            self.weight = num_samples if cap is None else min(num_samples, cap)  # what the plain sum would use
        self._party = SecAggDevice(device_id, round_context(fleet, task.round, task.model_id))
        cipher_key, mask_key = self._party.advertise()
        self.keys = SecAggKeys(task.round, device_id, cipher_key, mask_key)
        self._words: np.ndarray | None = None
        self._forwarded = False
        self.masked: MaskedUpdate | None = None
        # each step's answer, given again to a repeated request (a QoS 1 redelivery), never computed twice
        self._shares: tuple[SecAggRoster, SecAggShares] | None = None
        self._unmasked: tuple[UnmaskRequest, SecAggUnmask] | None = None

    @property
    def has_roster(self) -> bool:
        return self._shares is not None

    def _check(self, round_number: int, device_id: str) -> None:
        if round_number != self.round or device_id != self.device_id:
            raise ProtocolError("secagg-round", f"a frame of round {round_number} for {device_id}")

    def on_roster(self, roster: SecAggRoster) -> SecAggShares:
        self._check(roster.round, roster.device_id)
        if self._shares is not None and self._shares[0] == roster and self._shares[0].keys == roster.keys:
            return self._shares[1]
        params = SecAggParams(self._party.context, roster.participants, roster.degree, roster.threshold,
                              roster.length)  # fmt: skip
        shares = SecAggShares(self.round, self.device_id, self._party.share(params, roster.keys))
        self._shares = (roster, shares)
        return shares

    def on_forward(self, forward: SecAggForward) -> MaskedUpdate | None:
        """Its neighbours' shares: the masked update, if training is done."""
        self._check(forward.round, forward.device_id)
        if self._forwarded:
            return None  # a repeat: the masked update, if made, is the agent's to re-send
        self._party.receive(forward.sealed)
        self._forwarded = True
        return self._mask()

    def on_trained(self, update: Update, model_blob: bytes) -> MaskedUpdate | None:
        """The trained update (as the worker encoded it) and the model it started from: the masked update, if the
        neighbours' shares came."""
        template = decode_tensors(model_blob)
        delta = decode_delta(update.delta, update.codec, template)
        figures = (update.train_loss, update.train_accuracy, update.eval_accuracy)
        config = self.config
        if config.clip_norm is not None:  # clipped again as decoded (a codec may round past the norm), then noised
            delta, _ = clip_update(delta, config.clip_norm)
            if config.noise_shares > 0:
                share = noise_share(template, config.noise_multiplier, config.clip_norm, config.noise_shares,
                                    np.random.default_rng(secrets.randbits(128)))  # fmt: skip
                delta = {name: (value + share[name]).astype(value.dtype) for name, value in delta.items()}
            figures = (0.0, 0.0, None)  # no exact figures under DP
        self._words = update_words(delta, self.weight, template, *figures)
        return self._mask()

    def _mask(self) -> MaskedUpdate | None:
        if self._words is None or not self._forwarded or self.masked is not None:
            return None
        masked = self._party.masked_input(self._words)
        self._words = None
        self.masked = MaskedUpdate(self.round, self.device_id, self.model_id, masked.astype("<u8").tobytes())
        return self.masked

    def on_unmask(self, request: UnmaskRequest) -> SecAggUnmask:
        """Its shares of the others' secrets: seeds of those that sent, mask keys of those that dropped (once)."""
        self._check(request.round, request.device_id)
        if self._unmasked is not None:
            if self._unmasked[0] != request:  # asked again with other names: the answer it gave stands, alone
                raise ProtocolError("secagg-order", "asked to unmask again with other survivors")
            return self._unmasked[1]
        answer = SecAggUnmask(self.round, self.device_id, self._party.unmask(request.survivors, request.dropped))
        self._unmasked = (request, answer)
        return answer
