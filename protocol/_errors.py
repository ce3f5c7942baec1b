"""The one exception root of genfl-edge.

Every error the project raises on purpose derives from :class:`GenflError`;
errors from paho, torch, onnx or the file system are converted at the
boundary with ``raise ... from exc`` so that callers need one ``except``.

::

    GenflError                 exit 1   anything the project raises on purpose
    ├── ConfigError            exit 2   bad flag, bad config file, bad value
    ├── DataError              exit 3   missing/unreadable data, label mismatch
    ├── ModelError             exit 4   unknown model, corrupt model file
    ├── ProtocolError          (none)   a network message was rejected
    └── TransportError         exit 5   broker unreachable, subscription refused
        └── BrokerRefused      exit 5   the broker answered and refused the login

A :class:`ProtocolError` never ends a process: it is logged, counted and the
message is dropped. The others carry ``exit_code`` for the CLI layer.
"""

from __future__ import annotations

__all__ = [
    "BrokerRefused",
    "ConfigError",
    "DataError",
    "GenflError",
    "ModelError",
    "ProtocolError",
    "TransportError",
]


class GenflError(Exception):
    """Root of every error genfl-edge raises on purpose."""

    exit_code: int = 1


class ConfigError(GenflError):
    """A flag, a config file or a config value is invalid."""

    exit_code = 2


class DataError(GenflError):
    """Device data is missing, unreadable or does not fit the model."""

    exit_code = 3


class ModelError(GenflError):
    """An unknown model name, or a model file that cannot be used."""

    exit_code = 4


class ProtocolError(GenflError):
    """A message from the network was rejected; ``reason`` is a short slug for counters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class TransportError(GenflError):
    """The broker cannot be reached or refused us."""

    exit_code = 5


class BrokerRefused(TransportError):
    """The broker is there and said no (bad credentials, not authorised, revoked)."""
