"""Stand-in pools for benchmarking GenFL's pool path: real training images no device holds, and damaged copies.

A pool made by a generator pretrained on public images is what the paper
sends. The benchmark stands in for it with images of the same data set's
training split that lie outside every benchmarked device's subset, so that
the pool adds images no device holds (as a pretrained generator would), and
then damages copies of it the way real generated pools are damaged:

* ``clean-500`` / ``clean-50``: 500 (or 50) held-out images per class;
* ``noisy``: ``clean-500`` with 30% of each class's images moved to a uniformly drawn other class folder
  (wrong-class images, as a text-to-image model makes them);
* ``shift``: ``clean-500`` in another style: grayscale, Gaussian blur (radius 1.5), contrast halved, a sepia tint
  (the domain gap of off-the-shelf generated images).

What this does not show: how a real generator's images score. Held-out real
images are an upper bound on a pool's quality; the damaged variants are two
failure modes, one at a time. The pools are derived from the data set, so they
are written outside the repository (``.bench_data/`` by default), never committed.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

VARIANTS = ("clean-500", "clean-50", "noisy", "shift")
NOISE_SHARE = 0.3


def held_out_index(labels: np.ndarray, used: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` indices of each class outside ``used`` (a boolean mask), drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    picked = []
    for label in np.unique(labels):
        free = np.flatnonzero((labels == label) & ~used)
        if len(free) < per_class:
            raise SystemExit(f"class {label}: only {len(free)} images outside the devices' subsets")
        picked.append(np.sort(rng.choice(free, size=per_class, replace=False)))
    return np.concatenate(picked)


def mislabel(labels: np.ndarray, share: float, num_classes: int, seed: int) -> np.ndarray:
    """A copy of ``labels`` with ``share`` of each class moved to a uniformly drawn other class."""
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        moved = rng.choice(members, size=round(share * len(members)), replace=False)
        others = np.array([c for c in range(num_classes) if c != label])
        noisy[moved] = rng.choice(others, size=len(moved))
    return noisy


def restyle(images: np.ndarray) -> np.ndarray:
    """Grayscale, blurred (radius 1.5), half contrast, sepia-tinted copies of uint8 (N, 3, H, W) images."""
    from PIL import Image, ImageFilter

    sepia = np.array([1.07, 0.74, 0.43])  # the tint's colour per channel (R, G, B), applied to gray
    out = np.empty_like(images)
    for index, image in enumerate(images):
        gray = Image.fromarray(np.transpose(image, (1, 2, 0))).convert("L").filter(ImageFilter.GaussianBlur(1.5))
        g = np.asarray(gray, dtype=np.float64) / 255.0
        g = 0.25 + 0.5 * g  # contrast halved around mid-gray
        tinted = np.clip(g[None, :, :] * sepia[:, None, None], 0.0, 1.0)
        out[index] = np.round(tinted * 255.0).astype(np.uint8)
    return out


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.transpose(image, (1, 2, 0))).save(buffer, format="PNG")
    return buffer.getvalue()


def write_pool(folder: Path, images: np.ndarray, labels: np.ndarray, classes: Sequence[str],
               truth: np.ndarray | None = None) -> None:  # fmt: skip
    """``folder/<class>/<sha256>.png`` per image; ``truth.json`` maps each file to its true class (for analysis)."""
    folder.mkdir(parents=True, exist_ok=True)
    truth_map = {}
    for index, (image, label) in enumerate(zip(images, labels)):
        data = _png(image)
        name = f"{hashlib.sha256(data).hexdigest()}.png"
        (folder / classes[int(label)]).mkdir(exist_ok=True)
        (folder / classes[int(label)] / name).write_bytes(data)
        truth_map[f"{classes[int(label)]}/{name}"] = classes[int(truth[index] if truth is not None else label)]
    (folder / "truth.json").write_text(json.dumps(truth_map))


def build_pools(dataset: str, seeds: Sequence[int], train_subset: int | None, out: Path, *,
                eval_subset: int | None = None, variants: Sequence[str] = VARIANTS) -> dict[str, Path]:  # fmt: skip
    """Write the benchmark's pools (once: a pool already there is reused); their folders.

    With ``train_subset`` the pool holds training images outside every seed's device subset; without (the
    devices hold the whole training split) it holds test images outside the evaluation subset."""
    from edge_agent import load_dataset
    from simulation._simulation import stratified_subset

    if train_subset is not None:
        key = f"train-{train_subset}-seeds-{'-'.join(map(str, sorted(seeds)))}"
    elif eval_subset is not None:
        key = f"test-outside-eval-{eval_subset}"
    else:
        raise SystemExit("a pool needs images no device holds: give --train-subset, or --eval-subset")
    wanted = {v: out / key / v for v in variants}
    if all((path / "truth.json").is_file() for path in wanted.values()):
        return wanted
    data = load_dataset(dataset)
    split = data.train if train_subset is not None else data.test
    labels = split.labels
    used = np.zeros(len(labels), dtype=bool)
    if train_subset is not None:
        for seed in seeds:  # the pool holds no image of any benchmarked seed's device subsets
            used[stratified_subset(labels, train_subset, seed)] = True
    else:
        assert eval_subset is not None
        used[stratified_subset(labels, eval_subset, seed=0)] = True  # the simulation evaluates on these
    for variant in variants:
        folder = wanted[variant]
        if (folder / "truth.json").is_file():
            continue
        per_class = 50 if variant == "clean-50" else 500
        index = held_out_index(labels, used, per_class, seed=1234)
        images, truth = split.images[index], labels[index]
        shown = truth
        if variant == "noisy":
            shown = mislabel(truth, NOISE_SHARE, len(data.classes), seed=99)
        if variant == "shift":
            images = restyle(images)
        print(f"writing pool {variant} ({len(index)} images) to {folder}", flush=True)
        write_pool(folder, images, shown, data.classes, truth)
    return wanted
