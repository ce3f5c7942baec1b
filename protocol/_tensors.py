"""Tensors on the wire: safetensors bytes, never pickle.

Weights travel as ``dict[str, numpy.ndarray]``. The safetensors format is a
JSON header plus raw little-endian data, so decoding cannot execute code and
the declared sizes are checked against the buffer before anything is built.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load as _st_load, save as _st_save

from ._errors import ProtocolError

__all__ = ["TensorDict", "blob_id", "decode_tensors", "encode_tensors"]

TensorDict = dict[str, np.ndarray]

_ALLOWED_DTYPES = frozenset(
    {
        np.dtype(np.float16),
        np.dtype(np.float32),
        np.dtype(np.float64),
        np.dtype(np.int64),
        np.dtype(np.int8),
        np.dtype(np.uint8),
    }
)


def blob_id(data: bytes) -> str:
    """Content address of a blob: the hex sha256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


def encode_tensors(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialise named arrays to safetensors bytes (keys sorted, so equal dicts give equal bytes)."""
    # np.ascontiguousarray would turn 0-d scalars (BatchNorm counters) into shape (1,)
    ordered = {name: np.require(tensors[name], requirements="C") for name in sorted(tensors)}
    data = bytes(_st_save(ordered, metadata=dict(metadata) if metadata else None))
    return _sorted_metadata(data) if metadata is not None and len(metadata) > 1 else data


def _sorted_metadata(data: bytes) -> bytes:
    """The same safetensors bytes with the metadata's keys in sorted order.

    safetensors writes the metadata from a hash map, whose order changes from one process to the next: two keys
    or more would give the same model different bytes, and so a different id (a restarted server would not
    recognise the model its devices hold). The header keeps its length (the same keys, reordered), so the data
    offsets do not move."""
    import json

    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > size:  # a formatting json and safetensors do not share: keep what safetensors wrote
        return data
    return data[:8] + text + b" " * (size - len(text)) + data[8 + size :]


def decode_tensors(data: bytes) -> TensorDict:
    """Parse safetensors bytes into arrays, or raise :class:`ProtocolError`."""
    try:
        tensors = _st_load(bytes(data))
    except (SafetensorError, ValueError, TypeError, OverflowError) as exc:
        raise ProtocolError("bad-tensors", f"not a safetensors payload ({exc})") from exc
    for name, array in tensors.items():
        if array.dtype not in _ALLOWED_DTYPES:
            raise ProtocolError("bad-tensors", f"tensor {name!r} has unsupported dtype {array.dtype}")
    return tensors
