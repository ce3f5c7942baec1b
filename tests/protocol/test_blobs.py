import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from protocol import BlobAssembler, BlobStore, ProtocolError, blob_id, chunk_count, iter_chunks


def test_chunks_reassemble_to_the_blob(tmp_path: Path) -> None:
    # Prepare
    data = bytes(range(256)) * 41  # 10,496 bytes -> 11 chunks of 1,000
    store = BlobStore(tmp_path)
    chunks = list(iter_chunks(data, 1000))
    assembler = BlobAssembler(store, blob_id(data), len(chunks), len(data))
    # Execute
    done = [assembler.add(c) for c in reversed(chunks)]
    # Assert
    assert done == [False] * 10 + [True]
    assert store.get(blob_id(data)) == data
    assert len(chunks) == chunk_count(len(data), 1000) == 11


def test_interrupted_transfer_resumes_with_missing_chunks_only(tmp_path: Path) -> None:
    data = b"x" * 2500 + b"y" * 2500
    chunks = list(iter_chunks(data, 1000))
    first = BlobAssembler(BlobStore(tmp_path), blob_id(data), 5, len(data))
    first.add(chunks[0])
    first.add(chunks[3])
    # A new assembler (the agent restarted) finds the verified chunks on disk.
    second = BlobAssembler(BlobStore(tmp_path), blob_id(data), 5, len(data))
    assert second.missing() == (1, 2, 4)
    resent = list(iter_chunks(data, 1000, second.missing()))
    assert [c.index for c in resent] == [1, 2, 4]
    assert [second.add(c) for c in resent] == [False, False, True]
    assert BlobStore(tmp_path).get(blob_id(data)) == data


def test_chunk_with_a_wrong_hash_is_rejected_and_not_kept() -> None:
    data = b"abc" * 1000
    chunk = next(iter_chunks(data, 1024))
    assembler = BlobAssembler(BlobStore(), blob_id(data), chunk.count, len(data))
    bad = replace(chunk, data=b"z" + chunk.data[1:])
    with pytest.raises(ProtocolError) as info:
        assembler.add(bad)
    assert info.value.reason == "bad-chunk-hash"
    assert 0 in assembler.missing()


def test_store_removes_a_corrupt_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    ident = store.put(b"model bytes")
    (tmp_path / ident).write_bytes(b"tampered")
    with pytest.raises(KeyError, match="corrupt"):
        store.get(ident)
    assert not store.has(ident)
    assert ident == hashlib.sha256(b"model bytes").hexdigest()
