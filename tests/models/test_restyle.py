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


def _smooth_photos(rng: np.random.Generator, n: int = 60, size: int = 16) -> np.ndarray:
    """Images with detail at every scale: white noise summed with blurred copies of itself."""
    noise = rng.normal(0.0, 1.0, size=(n, 3, size, size))
    layers = noise + models.blurred(np.clip(noise * 40 + 128, 0, 255).astype(np.uint8), 1.0).astype(np.float64) / 40
    return np.clip(layers * 30 + 128, 0, 255).astype(np.uint8)


def test_a_blurred_batch_is_a_sharpness_gap_and_the_picked_images_take_its_blur() -> None:
    rng = np.random.default_rng(2)
    photos, more = _smooth_photos(rng), _smooth_photos(rng)
    soft = models.blurred(more, 1.5)
    assert models.matching_blur(photos, more) == 0.0  # the same kind of images: no gap, no blur
    assert models.matching_blur(soft, photos) == 0.0  # a sharper batch: never sharpened
    assert models.matching_blur(photos, photos[:0]) == 0.0  # no batch, or a flat one: nothing to match
    assert models.matching_blur(photos, np.full((4, 3, 16, 16), 90, dtype=np.uint8)) == 0.0
    sigma = models.matching_blur(photos, soft)
    assert 1.0 <= sigma <= 2.0
    half = np.arange(len(photos)) % 2 == 0
    out = models.sharpness_like(photos, soft, only=half)
    assert np.array_equal(out[~half], photos[~half])
    assert abs(models.sharpness(out[half]) / models.sharpness(soft) - 1.0) < 0.35
    assert models.sharpness(out[half]) < models.SHARPNESS_GAP * models.sharpness(photos[half])


def test_sharpness_ignores_contrast_and_brightness() -> None:
    rng = np.random.default_rng(3)
    photos = _smooth_photos(rng)
    dimmer = (photos.astype(np.int64) // 2 + 40).astype(np.uint8)
    assert abs(models.sharpness(dimmer) / models.sharpness(photos) - 1.0) < 0.05
    assert models.sharpness(np.full((4, 3, 8, 8), 90, dtype=np.uint8)) == 0.0
    assert models.sharpness(np.zeros((0, 3, 8, 8), dtype=np.uint8)) == 0.0
