"""Blob serving: the chunks a device asks for, of a blob its task names only, within its byte budget."""

from __future__ import annotations

from protocol import BlobChunk, BlobRequest, BlobStore, ProtocolError, iter_chunks

from ._limits import ByteBudget
from ._round import OpenRound

__all__ = ["blob_chunks"]


def blob_chunks(
    current: OpenRound | None,
    device_id: str,
    request: BlobRequest,
    named: dict[str, int],
    store: BlobStore,
    chunk_size: int,
    now: float,
) -> list[BlobChunk]:
    """The chunks ``request`` asks for; ``named`` holds the blobs every task names (the global model) with their
    sizes, the device's synthetic batch is added from the round. ProtocolError for a blob it may not have."""
    if current is None or device_id not in current.configs or device_id in current.answered:
        raise ProtocolError("unwanted-blob", f"{device_id} has no task that needs blobs")
    named = dict(named)
    if device_id in current.synthetic:
        synthetic_id, synthetic_size = current.synthetic[device_id]
        named[synthetic_id] = synthetic_size
    if request.blob_id not in named:
        raise ProtocolError("unwanted-blob", f"{request.blob_id[:12]} is not named in {device_id}'s task")
    if not store.has(request.blob_id):
        raise ProtocolError("unknown-blob", request.blob_id[:12])
    budget = current.budgets.get(device_id)
    if budget is None:
        budget = current.budgets[device_id] = ByteBudget.for_task(sum(named.values()), now)
    chunks = list(iter_chunks(store.get(request.blob_id), chunk_size, request.chunks))
    if not budget.take(sum(len(c.data) for c in chunks), now):
        raise ProtocolError("rate-limited", f"{device_id} asked for {request.blob_id[:12]} too often")
    return chunks
