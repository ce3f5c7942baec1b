"""Bridging a style gap between a device's images and a synthetic batch: pure numpy, uint8 (N, C, H, W) in and out.

Synthetic images often differ from a device's photographs in style (colours, contrast, sharpness). Left alone,
that style becomes a cue for "a class this device lacks". The functions here measure the colour gap and move
images across it through the pixels' mean and covariance. (Matching a blurry batch's sharpness as well was
measured on the benchmark's shifted pool and did not help: docs/benchmarks.md.)
"""

from __future__ import annotations

import numpy as np

__all__ = ["STYLE_GAP_NATS", "colour_gap", "colours_like", "restyled"]


def restyled(synthetic: np.ndarray, real: np.ndarray) -> np.ndarray:
    """uint8 synthetic images (N, C, H, W) with each channel's mean and spread moved to those of ``real``."""
    if len(synthetic) == 0 or len(real) == 0:
        return synthetic
    source = synthetic.astype(np.float32)
    axes = (0, 2, 3)
    target = real.astype(np.float32)
    mean_s, std_s = source.mean(axes, keepdims=True), source.std(axes, keepdims=True)
    mean_r, std_r = target.mean(axes, keepdims=True), target.std(axes, keepdims=True)
    moved = (source - mean_s) / np.maximum(std_s, 1.0) * std_r + mean_r
    return np.clip(np.rint(moved), 0, 255).astype(np.uint8)


def _pixel_moments(images: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of uint8 images' pixels (colour vectors), a chunk at a time (integer sums: exact)."""
    channels = images.shape[1]
    total = np.zeros(channels, dtype=np.float64)
    products = np.zeros((channels, channels), dtype=np.float64)
    for start in range(0, len(images), chunk):
        pixels = images[start : start + chunk].transpose(0, 2, 3, 1).reshape(-1, channels).astype(np.int64)
        total += pixels.sum(0)
        products += pixels.T @ pixels
    count = len(images) * images.shape[2] * images.shape[3]
    mean = total / count
    covariance = (products - count * np.outer(mean, mean)) / max(count - 1, 1)
    return mean, covariance


# Above this many nats between the colour distributions of a device's images and its synthetic batch there is
# a style gap. Measured on CIFAR-10 shards: 0.03-0.33 for held-out real images, 1,800-3,800 for grey restyled ones.
STYLE_GAP_NATS = 1.0


def colour_gap(images: np.ndarray, style: np.ndarray) -> float:
    """KL divergence (nats) from the Gaussian of ``images``' pixel colours to that of ``style``'s."""
    if len(images) == 0 or len(style) == 0:
        return 0.0
    channels = images.shape[1]
    mean_0, cov_0 = _pixel_moments(images)
    mean_1, cov_1 = _pixel_moments(style)
    cov_0, cov_1 = cov_0 + np.eye(channels), cov_1 + np.eye(channels)  # a flat channel: no zero variance
    inverse = np.linalg.inv(cov_1)
    shift = mean_1 - mean_0
    log_ratio = np.linalg.slogdet(cov_1)[1] - np.linalg.slogdet(cov_0)[1]
    return float(0.5 * (np.trace(inverse @ cov_0) + shift @ inverse @ shift - channels + log_ratio))


def colours_like(images: np.ndarray, style: np.ndarray, only: np.ndarray | None = None) -> np.ndarray:
    """uint8 ``images`` (N, C, H, W) with the colours of ``style``: their pixels' mean and colour covariance moved
    to those of ``style``'s pixels (a linear map; one channel: mean and spread). Grey, tinted, low-contrast
    ``style`` images make grey, tinted, low-contrast copies. With ``only`` (a mask over the images), the map is
    measured on all of them and applied to those it picks; the others are returned as they are."""
    if len(images) == 0 or len(style) == 0:
        return images
    channels = images.shape[1]
    mean_s, cov_s = _pixel_moments(images)
    mean_t, cov_t = _pixel_moments(style)

    def power(matrix: np.ndarray, exponent: float) -> np.ndarray:
        values, vectors = np.linalg.eigh(matrix + np.eye(channels))
        return (vectors * np.clip(values, 1e-6, None) ** exponent) @ vectors.T

    transform = power(cov_t, 0.5) @ power(cov_s, -0.5)
    out = images.copy()
    picked = np.flatnonzero(np.ones(len(images), dtype=bool) if only is None else only)
    for start in range(0, len(picked), 1024):
        index = picked[start : start + 1024]
        pixels = images[index].transpose(0, 2, 3, 1).reshape(-1, channels).astype(np.float64)
        moved = np.clip(np.rint((pixels - mean_s) @ transform.T + mean_t), 0, 255).astype(np.uint8)
        out[index] = moved.reshape(len(index), images.shape[2], images.shape[3], channels).transpose(0, 3, 1, 2)
    return out
