"""Bridging a style gap on a device: the colour distance and the colour map, pure numpy."""

from __future__ import annotations

import numpy as np

import models


def _photos(rng: np.random.Generator, n: int = 40) -> np.ndarray:
    base = rng.integers(0, 256, size=(n, 3, 8, 8)).astype(np.float64)
    return np.clip(base * np.array([1.0, 0.8, 0.6])[None, :, None, None], 0, 255).astype(np.uint8)


def test_a_grey_tinted_batch_is_a_style_gap_and_more_photos_are_not() -> None:
    rng = np.random.default_rng(0)
    photos, more = _photos(rng), _photos(rng)
    grey = np.repeat(rng.integers(60, 120, size=(40, 1, 8, 8), dtype=np.uint8), 3, axis=1)
    assert models.colour_gap(photos, more) < 0.1 < models.STYLE_GAP_NATS
    assert models.colour_gap(photos, grey) > 100 * models.STYLE_GAP_NATS


def test_the_images_picked_take_the_batchs_colours_and_the_others_stay() -> None:
    rng = np.random.default_rng(1)
    photos = _photos(rng, 200)
    grey = rng.integers(40, 200, size=(200, 1, 8, 8))[:, [0, 0, 0]]
    sepia = np.clip(grey * np.array([1.0, 0.7, 0.4])[None, :, None, None], 0, 255).astype(np.uint8)
    half = np.arange(200) % 2 == 0
    out = models.colours_like(photos, sepia, only=half)
    assert np.array_equal(out[~half], photos[~half])
    moved = out[half].transpose(0, 2, 3, 1).reshape(-1, 3).astype(np.float64)
    target = sepia.transpose(0, 2, 3, 1).reshape(-1, 3).astype(np.float64)
    assert np.allclose(moved.mean(0), target.mean(0), atol=4.0)
    assert np.corrcoef(moved.T)[0, 1] > 0.95  # grey-like: the channels move together, as in the batch
