"""Non-IID partitions of a labelled data set across simulated devices.

Two classic schemes, both seeded and reproducible:

* Dirichlet label skew (Hsu et al. 2019): for each class, the share each
  device gets is drawn from Dir(alpha); small alpha = very skewed devices.
* Pathological shards (McMahan et al. 2017): each device holds exactly
  ``classes_per_device`` classes.
"""

from __future__ import annotations

import numpy as np

from protocol import ConfigError, DataError

__all__ = ["dirichlet_partition", "partition_labels", "shard_partition", "label_histogram"]

_MAX_DRAWS = 1000


def dirichlet_partition(
    labels: np.ndarray, num_devices: int, alpha: float, seed: int, min_samples: int = 10
) -> list[np.ndarray]:
    """Index arrays, one per device, with class shares drawn from Dir(alpha).

    Draws again (up to 1000 times) until every device holds ``min_samples``.
    """
    if alpha <= 0:
        raise ConfigError(f"alpha must be positive, got {alpha}")
    _check_sizes(labels, num_devices, min_samples)
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    for _ in range(_MAX_DRAWS):
        shards: list[list[np.ndarray]] = [[] for _ in range(num_devices)]
        for label in classes:
            members = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(num_devices, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(members)).astype(int)
            for device, part in enumerate(np.split(members, cuts)):
                shards[device].append(part)
        parts = [np.sort(np.concatenate(s)) for s in shards]
        if min(len(p) for p in parts) >= min_samples:
            return parts
    raise DataError(
        f"no Dirichlet(alpha={alpha}) draw gave every one of {num_devices} devices {min_samples} samples "
        f"in {_MAX_DRAWS} tries; raise alpha, lower --min-samples or use fewer devices"
    )


def shard_partition(
    labels: np.ndarray, num_devices: int, classes_per_device: int, seed: int, min_samples: int = 10
) -> list[np.ndarray]:
    """Each device holds ``classes_per_device`` distinct classes; classes are spread evenly."""
    classes = np.unique(labels)
    if not 1 <= classes_per_device <= len(classes):
        raise ConfigError(f"classes per device must be in 1..{len(classes)}, got {classes_per_device}")
    _check_sizes(labels, num_devices, min_samples)
    rng = np.random.default_rng(seed)
    order = rng.permutation(classes)
    holders: dict[int, list[int]] = {int(c): [] for c in classes}
    for device in range(num_devices):
        for j in range(classes_per_device):
            holders[int(order[(device * classes_per_device + j) % len(order)])].append(device)
    shards: list[list[np.ndarray]] = [[] for _ in range(num_devices)]
    for label, devices in holders.items():
        if not devices:
            continue
        members = rng.permutation(np.flatnonzero(labels == label))
        for device, part in zip(devices, np.array_split(members, len(devices))):
            shards[device].append(part)
    parts = [np.sort(np.concatenate(s)) if s else np.array([], dtype=np.int64) for s in shards]
    smallest = min(len(p) for p in parts)
    if smallest < min_samples:
        raise DataError(f"a device got {smallest} samples (< {min_samples}); use fewer devices or more classes each")
    return parts


def partition_labels(
    labels: np.ndarray,
    num_devices: int,
    *,
    scheme: str = "dirichlet",
    alpha: float = 0.5,
    classes_per_device: int = 2,
    seed: int = 0,
    min_samples: int = 10,
) -> list[np.ndarray]:
    """Dispatch on ``scheme`` (``dirichlet`` or ``shards``)."""
    if scheme == "dirichlet":
        return dirichlet_partition(labels, num_devices, alpha, seed, min_samples)
    if scheme == "shards":
        return shard_partition(labels, num_devices, classes_per_device, seed, min_samples)
    raise ConfigError(f"unknown partition scheme {scheme!r}; use dirichlet or shards")


def label_histogram(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """(devices, classes) sample counts."""
    return np.stack([np.bincount(labels[p], minlength=num_classes)[:num_classes] for p in parts])


def _check_sizes(labels: np.ndarray, num_devices: int, min_samples: int) -> None:
    if num_devices < 1:
        raise ConfigError(f"need at least one device, got {num_devices}")
    if min_samples < 1:
        raise ConfigError("min samples must be at least 1")
    if len(labels) < num_devices * min_samples:
        raise DataError(f"{len(labels)} samples cannot give {num_devices} devices {min_samples} each")
