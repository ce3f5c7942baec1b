"""Label counts a device may share, with epsilon-differential privacy (the Laplace mechanism).

A label histogram has L1 sensitivity 1: adding or removing one sample
changes one count by one. Adding independent ``Laplace(0, 1/epsilon)`` noise
to every count therefore releases the histogram with epsilon-DP (Dwork et
al. 2006); clipping at zero and rounding afterwards are post-processing and
keep the guarantee.

The noise is drawn once per data set and kept in the state folder: drawing
anew at every start would let an observer average the releases and spend
the privacy budget again each time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from protocol import ConfigError, atomic_write

__all__ = ["laplace_label_counts", "released_label_counts", "released_sample_count", "scaled_to_total"]

log = logging.getLogger("genfl.edge")


def laplace_label_counts(counts: Sequence[int], epsilon: float, rng: np.random.Generator) -> tuple[float, ...]:
    """An epsilon-DP release of a label histogram: Laplace(1/epsilon) noise per count, clipped at 0."""
    if not epsilon > 0:
        raise ConfigError(f"label noise epsilon must be positive, got {epsilon}")
    noisy = np.asarray(counts, dtype=np.float64) + rng.laplace(0.0, 1.0 / epsilon, size=len(counts))
    return tuple(round(float(x), 2) for x in np.clip(noisy, 0.0, None))


def scaled_to_total(counts: Sequence[float], total: int) -> tuple[float, ...]:
    """Counts rescaled to add up to ``total`` (the sample count the device reports), as the server checks.

    Post-processing of a noised release with the reported sample count: it keeps the privacy the two
    releases had (the count is exact unless the device noises it too). All-zero counts become uniform.
    """
    values = np.clip(np.asarray(counts, dtype=np.float64), 0.0, None)
    if len(values) == 0:
        return ()
    mass = float(values.sum())
    scaled = values * (total / mass) if mass > 0 else np.full(len(values), total / len(values))
    return tuple(round(float(x), 3) for x in scaled)


def released_label_counts(
    state_dir: Path, counts: Sequence[int], epsilon: float | None, classes: Sequence[str] | None = None
) -> tuple[float, ...]:
    """What this device sends as its label counts (in the order of ``classes``, the fleet's list): exact, or the
    one noised release it keeps on disk for that list.

    A noised release is rescaled (by the caller, :func:`scaled_to_total`) to the sample count it reports."""
    if epsilon is None:
        return tuple(float(c) for c in counts)
    path = state_dir / "label-counts.json"
    num_samples = int(sum(counts))
    names = None if classes is None else list(classes)
    try:
        kept = json.loads(path.read_text())
        same = kept["epsilon"] == epsilon and kept["num_samples"] == num_samples and kept.get("classes") == names
        if same and len(kept["counts"]) == len(counts):
            return tuple(float(c) for c in kept["counts"])
        log.warning("the data set, the fleet's classes or epsilon changed: drawing new label noise (the privacy "
                    "budgets add up)")  # fmt: skip
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as exc:
        log.warning("unreadable %s (%s): drawing new label noise", path, exc)
    released = laplace_label_counts(counts, epsilon, np.random.default_rng())
    state_dir.mkdir(parents=True, exist_ok=True)
    kept_now = {"epsilon": epsilon, "num_samples": num_samples, "classes": names, "counts": released}
    atomic_write(path, json.dumps(kept_now).encode())
    return released


def released_sample_count(state_dir: Path, num_samples: int, epsilon: float) -> int:
    """The sample count this device reports when it noises it: Laplace(1/epsilon), at least 1, kept on disk.

    The count is the FedAvg weight; with noise the server no longer learns it exactly (one sample more or
    less changes it by one: sensitivity 1). Drawn once, like the label counts.
    """
    path = state_dir / "sample-count.json"
    try:
        kept = json.loads(path.read_text())
        if kept["epsilon"] == epsilon and kept["num_samples"] == num_samples and isinstance(kept["released"], int):
            return max(1, kept["released"])
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("unreadable %s (%s): drawing new sample count noise", path, exc)
    noise = np.random.default_rng().laplace(0.0, 1.0 / epsilon)
    released = max(1, round(num_samples + float(noise)))
    state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"epsilon": epsilon, "num_samples": num_samples, "released": released}).encode())
    return released
