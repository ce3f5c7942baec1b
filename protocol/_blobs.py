"""Content-addressed blobs and their chunked, resumable transfer.

A blob (a global model, an update, a synthetic batch) is named by the sha256
of its bytes. It travels as :class:`BlobChunk` messages of at most
``chunk_size`` bytes, each with its own sha256, so that a receiver verifies
every chunk as it lands and, after a drop, asks only for the ones it lacks.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ._errors import ProtocolError
from ._messages import BlobChunk
from ._tensors import blob_id

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "MIN_CHUNK_SIZE",
    "atomic_write",
    "BlobAssembler",
    "BlobStore",
    "chunk_count",
    "iter_chunks",
]

DEFAULT_CHUNK_SIZE = 256 * 1024
MIN_CHUNK_SIZE = 1024  # a server never sends smaller chunks (but the last), so a receiver can bound the count


def chunk_count(size: int, chunk_size: int) -> int:
    return max(1, -(-size // chunk_size))


def iter_chunks(data: bytes, chunk_size: int, indices: tuple[int, ...] = ()) -> Iterator[BlobChunk]:
    """The chunks of ``data`` (all, or only ``indices``; out-of-range indices are skipped)."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    ident = blob_id(data)
    count = chunk_count(len(data), chunk_size)
    wanted = sorted({i for i in indices if 0 <= i < count}) if indices else range(count)
    for index in wanted:
        piece = data[index * chunk_size : (index + 1) * chunk_size]
        yield BlobChunk(
            blob_id=ident,
            index=index,
            count=count,
            total_size=len(data),
            chunk_sha256=hashlib.sha256(piece).hexdigest(),
            data=piece,
        )


def atomic_write(path: Path, data: bytes, *, mode: int | None = None, owner: tuple[int, int] | None = None) -> None:
    """Write via a temp file in the same folder, fsync and rename: readers never see half a file.

    The temp file has a random name and is created exclusively (a planted symlink makes it fail, never
    followed). ``mode`` and ``owner`` are set on the open file before it appears under its name, so the file
    is never readable by others, and nothing is changed by path afterwards (a folder owned by another user
    cannot redirect a ``chown``).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            if owner is not None:
                os.fchown(handle.fileno(), *owner)
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class BlobStore:
    """Blobs by sha256, in a folder (or in memory when ``root`` is None)."""

    def __init__(self, root: Path | None = None) -> None:
        self._root = root
        self._memory: dict[str, bytes] = {}
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)

    def put(self, data: bytes) -> str:
        ident = blob_id(data)
        if self._root is None:
            self._memory[ident] = bytes(data)
        elif not (self._root / ident).exists():
            atomic_write(self._root / ident, data)
        return ident

    def has(self, ident: str) -> bool:
        return ident in self._memory if self._root is None else (self._root / ident).is_file()

    def get(self, ident: str) -> bytes:
        """The blob's bytes, checked against its name (a corrupt file is removed)."""
        if self._root is None:
            if ident not in self._memory:
                raise KeyError(ident)
            return self._memory[ident]
        path = self._root / ident
        data = path.read_bytes()
        if blob_id(data) != ident:
            path.unlink(missing_ok=True)
            raise KeyError(f"blob {ident[:12]} was corrupt on disk and has been removed")
        return data

    def discard(self, ident: str) -> None:
        """Forget a blob (a round's synthetic batches once the round is over); no error if absent."""
        if self._root is None:
            self._memory.pop(ident, None)
        else:
            (self._root / ident).unlink(missing_ok=True)

    def keep_newest(self, count: int) -> list[str]:
        """Remove all but the ``count`` most recently written blobs (a board keeps the models it may still need,
        not one per round for ever); the ids removed. A memory store keeps everything."""
        if self._root is None:
            return []
        blobs = []
        for path in self._root.iterdir():
            with contextlib.suppress(OSError):  # a blob removed meanwhile
                if path.is_file() and len(path.name) == 64:
                    blobs.append((path.stat().st_mtime, path.name))
        removed = [name for _, name in sorted(blobs, reverse=True)[count:]]
        for name in removed:
            self.discard(name)
        return removed

    def path(self, ident: str) -> Path | None:
        """Where a blob lies on disk (None for a memory store)."""
        return None if self._root is None else self._root / ident

    def partial_dir(self, ident: str) -> Path | None:
        return None if self._root is None else self._root / "partial" / ident


class BlobAssembler:
    """Collects the verified chunks of one blob; survives restarts when the store is on disk."""

    def __init__(self, store: BlobStore, ident: str, count: int, total_size: int) -> None:
        self.blob_id = ident
        self.count = count
        self.total_size = total_size
        self._store = store
        self._parts: dict[int, bytes] = {}
        self._dir = store.partial_dir(ident)
        if self._dir is not None:
            self._dir.mkdir(parents=True, exist_ok=True)
            for part in self._dir.iterdir():
                if part.name.isdigit() and int(part.name) < count:
                    self._parts[int(part.name)] = part.read_bytes()

    def missing(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.count) if i not in self._parts)

    def add(self, chunk: BlobChunk) -> bool:
        """Add a chunk; True once the blob is complete, verified and in the store."""
        if chunk.blob_id != self.blob_id or chunk.count != self.count or chunk.total_size != self.total_size:
            raise ProtocolError("bad-chunk", "chunk does not belong to the blob being assembled")
        if hashlib.sha256(chunk.data).hexdigest() != chunk.chunk_sha256:
            raise ProtocolError("bad-chunk-hash", f"chunk {chunk.index} of {chunk.blob_id[:12]}")
        if chunk.index not in self._parts:
            self._parts[chunk.index] = chunk.data
            if self._dir is not None:
                atomic_write(self._dir / str(chunk.index), chunk.data)
        if self.missing():
            return False
        data = b"".join(self._parts[i] for i in range(self.count))
        self._discard_parts()
        if len(data) != self.total_size or blob_id(data) != self.blob_id:
            raise ProtocolError("bad-blob-hash", f"blob {self.blob_id[:12]} does not match its id")
        self._store.put(data)
        return True

    def _discard_parts(self) -> None:
        self._parts.clear()
        if self._dir is not None:
            for part in self._dir.iterdir():
                part.unlink(missing_ok=True)
            self._dir.rmdir()
