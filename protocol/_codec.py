"""Update codecs: how a device's delta travels (``fp32``, ``int8``, ``int4``).

``fp32`` sends the named tensors as they are. ``int8`` and ``int4`` quantize
every float tensor symmetrically, one scale per output channel (axis 0; one
scale for 1-d tensors), to [-127, 127] or [-7, 7]; int4 packs two values per
byte. Integer buffers (BatchNorm's batch counters) travel exactly. The
quantized payload is three flat tensors, ``q``, ``scales`` and ``ints``, in the
order of the model's sorted tensor names, which both sides know: no per-tensor
header, so small models stay small on the wire.

The device keeps what quantization lost (the residual) and adds it to its next
delta ("error feedback"), so the low-bit codecs do not bias training.
:func:`decode_delta` checks sizes, dtypes and scales (finite, positive)
against the receiver's model before it builds anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

import numpy as np

from ._errors import ProtocolError
from ._tensors import TensorDict

__all__ = ["CODECS", "Codec", "decode_delta", "encode_delta"]


class Codec(str, Enum):
    """How a device encodes its update."""

    FP32 = "fp32"
    INT8 = "int8"
    INT4 = "int4"


CODECS = tuple(c.value for c in Codec)
_QMAX = {"int8": 127, "int4": 7}


def _is_float(array: np.ndarray) -> bool:
    return bool(np.issubdtype(array.dtype, np.floating))


def _channels(shape: tuple[int, ...]) -> int:
    return int(shape[0]) if len(shape) >= 2 else 1


def _pack_int4(q: np.ndarray) -> np.ndarray:
    nibbles = (q.astype(np.int16) + 8).astype(np.uint8)  # [-7, 7] -> [1, 15]
    if len(nibbles) % 2:
        nibbles = np.append(nibbles, np.uint8(8))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def _unpack_int4(packed: np.ndarray, count: int) -> np.ndarray:
    nibbles = np.empty(packed.size * 2, dtype=np.uint8)
    nibbles[0::2] = packed & 0x0F
    nibbles[1::2] = packed >> 4
    return nibbles[:count].astype(np.int8) - np.int8(8)


def encode_delta(delta: Mapping[str, np.ndarray], codec: str) -> TensorDict:
    """The tensors an update carries for ``codec`` (see the module docstring)."""
    if codec == "fp32":
        return dict(delta)
    if codec not in _QMAX:
        raise ValueError(f"unknown codec {codec!r}")
    qmax = _QMAX[codec]
    quantized, scales, ints = [], [], []
    for name in sorted(delta):
        array = np.asarray(delta[name])
        if not _is_float(array):
            ints.append(array.astype(np.int64).reshape(-1))
            continue
        rows = array.astype(np.float32).reshape(_channels(array.shape), -1)
        peak = np.abs(rows).max(axis=1) if rows.size else np.zeros(rows.shape[0], np.float32)
        scale = np.where(peak > 0, peak / np.float32(qmax), np.float32(1.0)).astype(np.float32)
        q = np.clip(np.rint(rows / scale[:, None]), -qmax, qmax).astype(np.int8)
        quantized.append(q.reshape(-1))
        scales.append(scale)
    flat = np.concatenate(quantized) if quantized else np.zeros(0, np.int8)
    return {
        "q": _pack_int4(flat) if codec == "int4" else flat,
        "scales": np.concatenate(scales) if scales else np.zeros(0, np.float32),
        "ints": np.concatenate(ints) if ints else np.zeros(0, np.int64),
    }


def decode_delta(tensors: Mapping[str, np.ndarray], codec: str, template: Mapping[str, np.ndarray]) -> TensorDict:
    """Rebuild named tensors from an update's payload, or raise ProtocolError."""
    if codec == "fp32":
        return dict(tensors)
    if codec not in _QMAX:
        raise ProtocolError("bad-codec", f"unknown codec {codec!r}")
    if set(tensors) != {"q", "scales", "ints"}:
        raise ProtocolError("bad-codec", f"{codec} payload must hold q, scales and ints, got {sorted(tensors)[:5]}")
    q, scales, ints = tensors["q"], tensors["scales"], tensors["ints"]
    expected_q = np.dtype(np.uint8) if codec == "int4" else np.dtype(np.int8)
    if q.dtype != expected_q or scales.dtype != np.float32 or ints.dtype != np.int64:
        raise ProtocolError("bad-codec", f"{codec} payload has dtypes {q.dtype}/{scales.dtype}/{ints.dtype}")
    names = sorted(template)
    floats = [n for n in names if _is_float(template[n])]
    n_values = sum(int(template[n].size) for n in floats)
    n_scales = sum(_channels(template[n].shape) for n in floats)
    n_ints = sum(int(template[n].size) for n in names if n not in floats)
    n_q = (n_values + 1) // 2 if codec == "int4" else n_values
    if q.size != n_q or scales.size != n_scales or ints.size != n_ints:
        raise ProtocolError(
            "bad-shape", f"{codec} payload sizes {q.size}/{scales.size}/{ints.size} do not fit the model"
        )
    if scales.size and not (np.isfinite(scales).all() and (scales > 0).all()):
        raise ProtocolError("bad-scale", "scales must be finite and positive")
    values = _unpack_int4(q.reshape(-1), n_values) if codec == "int4" else q.reshape(-1)
    if np.abs(values.astype(np.int16)).max(initial=0) > _QMAX[codec]:
        raise ProtocolError("bad-codec", f"{codec} values beyond +-{_QMAX[codec]}")
    out: TensorDict = {}
    v_at = s_at = i_at = 0
    for name in names:
        reference = template[name]
        if name in floats:
            channels = _channels(reference.shape)
            rows = values[v_at : v_at + reference.size].astype(np.float32).reshape(channels, -1)
            out[name] = (rows * scales[s_at : s_at + channels, None]).reshape(reference.shape).astype(reference.dtype)
            v_at += reference.size
            s_at += channels
        else:
            out[name] = ints[i_at : i_at + reference.size].reshape(reference.shape).astype(reference.dtype)
            i_at += reference.size
    return out
