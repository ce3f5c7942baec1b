"""Device data: the samples a board holds. They never leave the device.

A data source is named by a spec string:

=================  ==========================================================
``digits``         scikit-learn's bundled 8x8 digits (offline, the default)
``cifar10``        torchvision's CIFAR-10, downloaded into ``data_dir`` if absent
``folder:PATH``    one sub-folder per class, optionally inside ``train/`` ``test/``
``zip:PATH``       a zip of such a folder tree, read in place
``npz:PATH``       arrays written by :func:`save_npz` (simulated devices' shards)
=================  ==========================================================

Every loader returns :class:`DeviceDataset` with uint8 images (N, C, H, W).
Decoding a large zip is slow, so zip sources are cached as ``.npz`` in
``~/.cache/genfl`` (``GENFL_CACHE_DIR``), keyed by path, size and modification
time; the cache lives outside the repository.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from protocol import DataError, atomic_write, class_mapping

__all__ = [
    "IMAGE_SUFFIXES",
    "DeviceDataset",
    "LabeledArrays",
    "check_arrays_fit",
    "check_fits_model",
    "in_fleet_order",
    "load_dataset",
    "with_channels",
    "save_npz",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm"})
_TEST_SHARE = 0.2
_CACHE_FORMAT = 2


@dataclass(frozen=True)
class LabeledArrays:
    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,)

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {self.images.shape}")
        if self.labels.shape != (len(self.images),):
            raise DataError(f"{len(self.labels)} labels for {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> LabeledArrays:
        return LabeledArrays(self.images[index], self.labels[index])

    def label_counts(self, num_classes: int) -> np.ndarray:
        return np.bincount(self.labels, minlength=num_classes)[:num_classes]


@dataclass(frozen=True)
class DeviceDataset:
    name: str
    classes: tuple[str, ...]
    train: LabeledArrays
    test: LabeledArrays

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train.images.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def in_fleet_order(
    arrays: LabeledArrays, classes: tuple[str, ...], fleet: tuple[str, ...], origin: str
) -> LabeledArrays:
    """``arrays`` (labelled by the index of their name in ``classes``) numbered by the fleet's class list: a board
    that lacks classes keeps the fleet's numbers for the ones it has. A class the fleet does not know is a
    one-line DataError."""
    numbers = class_mapping(classes, fleet, origin)
    if numbers == tuple(range(len(classes))):
        return arrays
    return LabeledArrays(arrays.images, np.asarray(numbers, dtype=np.int64)[arrays.labels])


def with_channels(arrays: LabeledArrays, input_shape: tuple[int, ...]) -> LabeledArrays:
    """Images of the model's size: grey ones repeated into RGB for a colour model, colour ones reduced to grey
    (ITU-R 601 luma, as pillow does) for a grey one; anything else as it is (the fit check says what is wrong)."""
    have, channels = arrays.images.shape[1], input_shape[0]
    if tuple(arrays.images.shape[2:]) != tuple(input_shape[1:]):
        return arrays
    if have == channels or have not in (1, 3) or channels not in (1, 3):
        return arrays
    if channels == 3:
        return LabeledArrays(np.repeat(arrays.images, 3, axis=1), arrays.labels)
    weights = np.array([299, 587, 114], dtype=np.uint32).reshape(1, 3, 1, 1)
    grey = ((arrays.images.astype(np.uint32) * weights).sum(1, keepdims=True) + 500) // 1000
    return LabeledArrays(grey.astype(np.uint8), arrays.labels)


def check_arrays_fit(
    origin: str, arrays: LabeledArrays, model_name: str, input_shape: tuple[int, ...], num_classes: int
) -> None:
    """A one-line DataError when these samples cannot train ``model_name`` (shape or label range)."""
    shape = tuple(int(d) for d in arrays.images.shape[1:])
    if shape != tuple(input_shape):
        raise DataError(
            f"{origin}: images are {'x'.join(map(str, shape))} (CxHxW) "
            f"but {model_name} takes {'x'.join(map(str, input_shape))}"
        )
    if len(arrays) and not 0 <= int(arrays.labels.min()) <= int(arrays.labels.max()) < num_classes:
        raise DataError(f"{origin}: labels outside 0..{num_classes - 1}, the classes {model_name} predicts")


def check_fits_model(dataset: DeviceDataset, model_name: str, input_shape: tuple[int, ...], num_classes: int) -> None:
    """A one-line DataError when the data set cannot train ``model_name``."""
    check_arrays_fit(dataset.name, dataset.train, model_name, input_shape, num_classes)
    if dataset.num_classes != num_classes:
        raise DataError(f"{dataset.name}: {dataset.num_classes} classes but {model_name} predicts {num_classes}")


def split_held_out(arrays: LabeledArrays, seed: int = 0) -> tuple[LabeledArrays, LabeledArrays]:
    """A fixed 80/20 train/test split per class, for sources without their own split."""
    rng = np.random.default_rng(seed)
    test_index: list[np.ndarray] = []
    for label in np.unique(arrays.labels):
        members = rng.permutation(np.flatnonzero(arrays.labels == label))
        test_index.append(members[: round(len(members) * _TEST_SHARE)])
    test = np.sort(np.concatenate(test_index)) if test_index else np.array([], dtype=np.int64)
    train = np.setdiff1d(np.arange(len(arrays)), test)
    return arrays.subset(train), arrays.subset(test)


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (pixels 0..16, labels): its bundled file read directly, which is what
    ``load_digits`` does, without importing scikit-learn (most of a second of CPU on every agent's start)."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without running it
    if spec is None or spec.origin is None:
        raise DataError("the digits data set needs scikit-learn: pip install 'genfl-edge[edge]'")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():  # another layout: the library's own loader
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.images, bunch.target
    table = np.loadtxt(path, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)


def _load_digits() -> DeviceDataset:
    pixels, labels = _digits_arrays()
    # Pixel values are 0..16; scale to the uint8 range every other source uses.
    images = np.clip(pixels * 16.0, 0, 255).astype(np.uint8)[:, None, :, :]
    train, test = split_held_out(LabeledArrays(images, labels.astype(np.int64)))
    return DeviceDataset("digits", tuple(str(d) for d in range(10)), train, test)


def _load_cifar10(data_dir: Path, download: bool) -> DeviceDataset:
    try:
        from torchvision.datasets import CIFAR10
    except ImportError as exc:
        raise DataError("the cifar10 source needs torchvision: pip install 'genfl-edge[server]'") from exc
    splits = []
    for train in (True, False):
        try:
            raw = CIFAR10(root=str(data_dir), train=train, download=download)
        except RuntimeError as exc:  # torchvision says "Dataset not found or corrupted"
            raise DataError(f"cifar10 not found under {data_dir} ({exc}); allow the download or fix the path") from exc
        images = np.ascontiguousarray(np.asarray(raw.data, dtype=np.uint8).transpose(0, 3, 1, 2))
        splits.append(LabeledArrays(images, np.asarray(raw.targets, dtype=np.int64)))
    return DeviceDataset("cifar10", tuple(raw.classes), splits[0], splits[1])


_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


def _decode_image(data: bytes, origin: str, size: tuple[int, int] | None) -> np.ndarray:
    """uint8 (C, H, W): a grey image gives one channel, any other three (RGB)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            wanted = "L" if image.mode in _GRAY_MODES else "RGB"
            converted = image.convert(wanted)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot read image {origin}: {exc}") from exc
    if size is not None and converted.size != size:
        raise DataError(
            f"image {origin} is {converted.size[0]}x{converted.size[1]}, the others are {size[0]}x{size[1]}"
        )
    array = np.asarray(converted, dtype=np.uint8)
    return array[None] if wanted == "L" else array.transpose(2, 0, 1)


@dataclass(frozen=True)
class _Entry:
    split: str  # "train", "test" or "" when the tree has no split
    label: str
    name: str  # path inside the folder or zip


def _classify(paths: Iterable[str]) -> list[_Entry]:
    """Find ``[train|test/]<class>/<image>`` entries among relative POSIX paths."""
    entries = []
    for raw in paths:
        parts = PurePosixPath(raw).parts
        if (
            not parts
            or PurePosixPath(raw).suffix.lower() not in IMAGE_SUFFIXES
            or any(p.startswith(".") for p in parts)
        ):
            continue
        if len(parts) == 3 and parts[0] in ("train", "test"):
            entries.append(_Entry(parts[0], parts[1], raw))
        elif len(parts) == 2:
            entries.append(_Entry("", parts[0], raw))
    return entries


def _build_tree(source: str, entries: list[_Entry], read: Callable[[str], bytes]) -> DeviceDataset:
    if not entries:
        raise DataError(f"{source}: no images found (expected <class>/<image> or train|test/<class>/<image>)")
    split_tree = any(e.split for e in entries)
    if split_tree and not all(e.split for e in entries):
        raise DataError(f"{source}: mixes train/test folders with class folders at the top level")
    classes = tuple(sorted({e.label for e in entries}))
    if len(classes) < 2:
        raise DataError(f"{source}: found {len(classes)} class folder(s); need at least 2")
    class_index = {c: i for i, c in enumerate(classes)}
    if split_tree:
        for split in ("train", "test"):
            present = {e.label for e in entries if e.split == split}
            if present and present != set(classes):
                raise DataError(f"{source}: {split}/ has classes {sorted(present)}, expected {list(classes)}")
    ordered = sorted(entries, key=lambda e: (e.split, e.label, e.name))  # class by class, files by name
    decoded: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    for entry in ordered:
        decoded.append(_decode_image(read(entry.name), f"{source}/{entry.name}", size))
        size = size or (decoded[0].shape[2], decoded[0].shape[1])
    # All grey: one channel. Any colour: three, the grey ones repeated (a grey frame among colour ones).
    colour = any(image.shape[0] == 3 for image in decoded)
    images = np.stack([np.repeat(image, 3, axis=0) if colour and image.shape[0] == 1 else image for image in decoded])
    labels = np.array([class_index[e.label] for e in ordered], dtype=np.int64)
    splits = np.array([e.split for e in ordered])
    if split_tree:
        train = LabeledArrays(images[splits == "train"], labels[splits == "train"])
        test = LabeledArrays(images[splits == "test"], labels[splits == "test"])
        if len(train) == 0:
            raise DataError(f"{source}: train/ holds no images")
    else:
        train, test = split_held_out(LabeledArrays(images, labels))
    return DeviceDataset(source, classes, train, test)


def _cache_path(kind: str, path: Path) -> Path:
    stat = path.stat()
    # _CACHE_FORMAT: how the loader reads a tree (grey kept grey); a cache made another way is not reused
    key = f"{_CACHE_FORMAT}|{kind}|{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    key = hashlib.sha256(key.encode()).hexdigest()[:24]
    root = Path(os.environ.get("GENFL_CACHE_DIR", Path.home() / ".cache" / "genfl"))
    return root / f"{kind}-{key}.npz"


def _cached(kind: str, path: Path, load: Callable[[], DeviceDataset]) -> DeviceDataset:
    cache = _cache_path(kind, path)
    if cache.is_file():
        try:
            return _load_npz(cache)
        except DataError:
            cache.unlink(missing_ok=True)  # a broken cache is rebuilt, never trusted
    dataset = load()
    with contextlib.suppress(OSError):  # a read-only home only costs the decode next time
        save_npz(dataset, cache)
    return dataset


def save_npz(dataset: DeviceDataset, path: Path) -> None:
    """Write a data set as plain arrays (no pickle), readable as ``npz:PATH``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(
        buffer,
        name=dataset.name,
        classes=np.array(dataset.classes),
        train_x=dataset.train.images,
        train_y=dataset.train.labels,
        test_x=dataset.test.images,
        test_y=dataset.test.labels,
    )
    atomic_write(path, buffer.getvalue())


def _load_npz(path: Path) -> DeviceDataset:
    try:
        with np.load(path, allow_pickle=False) as z:
            return DeviceDataset(
                str(z["name"]),
                tuple(str(c) for c in z["classes"]),
                LabeledArrays(z["train_x"], z["train_y"].astype(np.int64)),
                LabeledArrays(z["test_x"], z["test_y"].astype(np.int64)),
            )
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"npz:{path}: not a genfl data file ({exc})") from exc


def _load_folder(path: Path) -> DeviceDataset:
    if not path.is_dir():
        raise DataError(f"folder:{path}: not a directory")
    files = [p.relative_to(path).as_posix() for p in sorted(path.rglob("*")) if p.is_file()]
    return _build_tree(f"folder:{path}", _classify(files), lambda name: (path / name).read_bytes())


def _load_zip(path: Path) -> DeviceDataset:
    if not path.is_file():
        raise DataError(f"zip:{path}: no such file")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"zip:{path}: not a readable zip ({exc})") from exc
    with archive:
        names = [n for n in archive.namelist() if not n.endswith("/")]
        tops = {PurePosixPath(n).parts[0] for n in names}
        prefix = ""
        if len(tops) == 1 and not _classify(names):  # everything inside one top folder
            prefix = tops.pop() + "/"
        relative = [n[len(prefix) :] for n in names if n.startswith(prefix)]

        def read(name: str) -> bytes:
            try:
                return archive.read(prefix + name)
            except (zipfile.BadZipFile, OSError, KeyError) as exc:
                raise DataError(f"zip:{path}: cannot read {name} ({exc})") from exc

        return _build_tree(f"zip:{path}", _classify(relative), read)


def load_dataset(spec: str, data_dir: Path | None = None, download: bool = True) -> DeviceDataset:
    """Load a data source by its spec string (see the module docstring)."""
    kind, _, argument = spec.partition(":")
    if kind == "digits" and not argument:
        return _load_digits()
    if kind == "cifar10" and not argument:
        return _load_cifar10(data_dir or Path("data"), download)
    if kind == "npz" and argument:
        path = Path(argument).expanduser()
        if not path.is_file():
            raise DataError(f"{spec}: no such file")
        return _load_npz(path)
    if kind in ("folder", "zip") and argument:
        path = Path(argument).expanduser()
        if not path.exists():
            raise DataError(f"{spec}: no such {'directory' if kind == 'folder' else 'file'}")
        if kind == "folder":  # a folder's mtime misses edits inside it: always read it afresh
            return _load_folder(path)
        return _cached(kind, path, lambda: _load_zip(path))
    raise DataError(f"unknown data source {spec!r}; use digits, cifar10, folder:PATH, zip:PATH or npz:PATH")
