"""A pool on disk is data from outside: only regular image files inside it are read, each checked for its size
before decoding; anything else is left out and counted, and a pool that cannot be read again keeps the last."""

from __future__ import annotations

import io
import logging
import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cloud_server.learning._pool import MAX_POOL_IMAGE_PIXELS, PoolGenerator, load_pool
from protocol import ConfigError

DIGITS = tuple(str(i) for i in range(10))


def _png(value: int, size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0]), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` grey pixels over a few bytes of data (a bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def _hostile_pool(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """Two classes of good images, and next to them every kind of file a pool must not read; the names left
    out, with a word of each reason."""
    pool = tmp_path / "pool"
    for label, value in (("1", 40), ("2", 200)):
        (pool / label).mkdir(parents=True)
        for i in range(3):
            (pool / label / f"good{i}.png").write_bytes(_png(value + i))
    private = tmp_path / "private"
    private.mkdir()
    (private / "secret.png").write_bytes(_png(123))
    (pool / "1" / "link.png").symlink_to(private / "secret.png")  # points out of the pool
    (pool / "3").symlink_to(private, target_is_directory=True)  # a class folder that is elsewhere
    (pool / "1" / "notes.png").write_text("not an image")
    os.mkfifo(pool / "2" / "pipe.png")  # would block a reader for good
    (pool / "2" / "bomb.png").write_bytes(_png_header_only(40_000, 40_000))  # PIL's own bomb error
    (pool / "2" / "large.png").write_bytes(_png_header_only(3000, 3000))  # small file, 9 MP to decode
    expected = {
        "1/link.png": "symlink",
        "3": "symlink",
        "1/notes.png": "not a readable image",
        "2/pipe.png": "not a regular file",
        "2/bomb.png": "DecompressionBombError",  # PIL's own limit, at open
        "2/large.png": "pixels, over",  # ours, from the header
    }
    return pool, expected


def test_a_pool_reads_only_its_own_small_image_files_and_counts_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare
    pool, expected = _hostile_pool(tmp_path)
    loaded: list[object] = []
    # Execute: in a thread, so that a reader blocked on the FIFO fails the test instead of hanging it
    with caplog.at_level(logging.WARNING, logger="genfl.server"):
        reader = threading.Thread(target=lambda: loaded.append(load_pool(pool, "cnn-digits", DIGITS)), daemon=True)
        reader.start()
        reader.join(timeout=30)
    # Assert: the good images only, every other entry named with its reason, in one warning line
    assert not reader.is_alive(), "the pool loader blocked"
    (images,) = loaded
    assert sorted(images.images) == [1, 2] and [len(images.images[c]) for c in (1, 2)] == [3, 3]
    assert images.names[1] == ("1/good0.png", "1/good1.png", "1/good2.png")
    assert sorted(images.skipped) == sorted(expected)
    for name, word in expected.items():
        assert word in images.skipped[name], (name, images.skipped[name])
    assert not any((images.images[c] == 123).all(axis=(1, 2, 3)).any() for c in images.images)  # nothing private
    warnings = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(warnings) == 1 and f"{len(expected)} entries left out" in warnings[0]
    assert MAX_POOL_IMAGE_PIXELS < 3000 * 3000


def test_a_pool_of_nothing_readable_is_refused_at_start(tmp_path: Path) -> None:
    (tmp_path / "pool" / "1").mkdir(parents=True)
    (tmp_path / "pool" / "1" / "a.png").write_text("text")
    with pytest.raises(ConfigError, match="holds no readable images"):
        PoolGenerator("cnn-digits", tmp_path / "pool", DIGITS)


def test_a_pool_that_cannot_be_read_again_keeps_the_images_read_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a pool read once
    pool, _ = _hostile_pool(tmp_path)
    generator = PoolGenerator("cnn-digits", pool, DIGITS)
    before = generator.held
    # Execute: the folder goes away (a refresh job half-way through), then a draw
    pool.rename(tmp_path / "moved")
    with caplog.at_level(logging.WARNING, logger="genfl.server"):
        images, labels, _ = generator.draw(np.array([0, 2, 2, 0, 0, 0, 0, 0, 0, 0]), seed=1)
    # Assert: the draw used the images read before, and said why
    assert generator.held == before and sorted(set(labels.tolist())) == [1, 2] and len(images) == 4
    assert any("keeping the 6 images read before" in r.getMessage() for r in caplog.records)
