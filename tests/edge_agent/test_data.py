import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import models
from edge_agent import check_fits_model, load_dataset
from protocol import DataError


def _write_tree(root: Path, split: bool, size: tuple[int, int] = (6, 5)) -> None:
    rng = np.random.default_rng(0)
    for part in ("train", "test") if split else ("",):
        for label in ("cat", "dog", "owl"):
            folder = root / part / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(5):
                pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def test_digits_is_the_offline_default() -> None:
    dataset = load_dataset("digits")
    assert dataset.input_shape == (1, 8, 8)
    assert len(dataset.train) + len(dataset.test) == 1797
    assert dataset.train.images.dtype == np.uint8 and dataset.train.images.max() == 255
    check_fits_model(dataset, "cnn-digits", models.get_spec("cnn-digits").input_shape, 10)


@pytest.mark.parametrize("split", [True, False])
def test_folder_tree_loads_with_or_without_split(tmp_path: Path, split: bool) -> None:
    _write_tree(tmp_path, split)
    dataset = load_dataset(f"folder:{tmp_path}")
    assert dataset.classes == ("cat", "dog", "owl")
    assert dataset.input_shape == (3, 5, 6)
    assert len(dataset.train) + len(dataset.test) == (30 if split else 15)
    assert len(dataset.test) == (15 if split else 3)


def test_zip_is_read_in_place_with_a_top_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENFL_CACHE_DIR", str(tmp_path / "cache"))
    _write_tree(tmp_path / "tree" / "pets", split=True)
    archive = tmp_path / "pets.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted((tmp_path / "tree").rglob("*.png")):
            z.write(path, path.relative_to(tmp_path / "tree").as_posix())
    first = load_dataset(f"zip:{archive}")
    cached = load_dataset(f"zip:{archive}")
    assert first.classes == cached.classes == ("cat", "dog", "owl")
    np.testing.assert_array_equal(first.train.images, cached.train.images)
    assert len(list((tmp_path / "cache").glob("zip-*.npz"))) == 1
    assert not list((tmp_path).glob("tree/**/*.npz"))


def test_cifar10_loader_reads_files_it_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # CIFAR-10's python release *is* pickled batches; torchvision reads them. The test
    # writes a tiny set in that format (its own bytes, nothing from elsewhere).
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": list(range(4))}
        (folder / name).write_bytes(pickle.dumps(batch))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [n.decode() for n in names]}))
    import torchvision.datasets.cifar as cifar

    # The files are ours, so their md5 sums differ from the release's.
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    monkeypatch.setattr(cifar.CIFAR10, "_check_integrity", lambda self: True)
    dataset = load_dataset("cifar10", tmp_path, download=False)
    assert dataset.input_shape == (3, 32, 32)
    assert (len(dataset.train), len(dataset.test)) == (20, 4)
    assert dataset.classes[0] == "airplane"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: f"folder:{p / 'missing'}", "no such directory"),
        (lambda p: f"zip:{p / 'missing.zip'}", "no such file"),
        (lambda p: (p / "empty").mkdir() or f"folder:{p / 'empty'}", "no images found"),
        (lambda p: (p / "bad.zip").write_bytes(b"PK nope") and f"zip:{p / 'bad.zip'}", "not a readable zip"),
        (lambda p: "mnist", "unknown data source"),
    ],
)
def test_bad_sources_fail_with_one_clear_line(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(DataError, match=message) as info:
        load_dataset(make(tmp_path))
    assert "\n" not in str(info.value)


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    _write_tree(tmp_path, split=False)
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"dog/broken\.jpg"):
        load_dataset(f"folder:{tmp_path}")


def test_image_of_another_size_is_named(tmp_path: Path) -> None:
    _write_tree(tmp_path, split=False)
    Image.new("RGB", (9, 9)).save(tmp_path / "owl" / "big.png")
    with pytest.raises(DataError, match=r"owl/big\.png is 9x9"):
        load_dataset(f"folder:{tmp_path}")


def test_label_set_that_differs_from_the_model_is_refused(tmp_path: Path) -> None:
    _write_tree(tmp_path, split=False, size=(32, 32))
    dataset = load_dataset(f"folder:{tmp_path}")
    with pytest.raises(DataError, match="3 classes but cnn-small predicts 10"):
        check_fits_model(dataset, "cnn-small", (3, 32, 32), 10)
    with pytest.raises(DataError, match="cnn-digits takes 1x8x8"):
        check_fits_model(dataset, "cnn-digits", (1, 8, 8), 3)


def test_a_board_lacking_classes_numbers_its_folders_by_the_fleets_list(tmp_path: Path) -> None:
    # Prepare: a board with only "dog" and "owl" of a fleet that also knows "ant" and "cat"
    from edge_agent import in_fleet_order

    for label in ("dog", "owl"):
        (tmp_path / label).mkdir()
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / label / "a.png")
    dataset = load_dataset(f"folder:{tmp_path}")
    # Execute
    numbered = in_fleet_order(dataset.train, dataset.classes, ("ant", "cat", "dog", "owl"), "board")
    # Assert: its own numbering would say 0 and 1
    assert sorted(set(dataset.train.labels.tolist())) == [0, 1]
    assert sorted(set(numbered.labels.tolist())) == [2, 3]
    with pytest.raises(DataError, match="'owl', which is not one of the fleet's 2 classes"):
        in_fleet_order(dataset.train, dataset.classes, ("ant", "dog"), "board")


def test_grey_folders_give_one_channel_and_fit_either_model(tmp_path: Path) -> None:
    # Prepare: grey 8x8 images in two class folders
    from edge_agent import with_channels

    for position, label in enumerate(["7", "3", "3", "7"]):
        (tmp_path / "train" / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((8, 8), 10 * position, np.uint8)).save(tmp_path / "train" / label / f"{position}.png")
    # Execute
    dataset = load_dataset(f"folder:{tmp_path}")
    # Assert: one channel, class by class and files by name; grey repeated into colour for a colour model
    assert dataset.input_shape == (1, 8, 8)
    assert dataset.train.images[:, 0, 0, 0].tolist() == [10, 20, 0, 30]
    assert [dataset.classes[i] for i in dataset.train.labels] == ["3", "3", "7", "7"]
    rgb = with_channels(dataset.train, (3, 8, 8))
    assert rgb.images.shape == (4, 3, 8, 8) and (rgb.images[:, 0] == rgb.images[:, 2]).all()
    assert with_channels(rgb, (1, 8, 8)).images.tolist() == dataset.train.images.tolist()
    assert with_channels(rgb, (1, 4, 4)) is rgb  # another size: left for the fit check to name
    # A colour frame among them: the data set is colour, the grey frames repeated
    Image.fromarray(np.full((8, 8, 3), (200, 100, 50), np.uint8)).save(tmp_path / "train" / "3" / "9.png")
    mixed = load_dataset(f"folder:{tmp_path}")
    assert mixed.input_shape == (3, 8, 8) and mixed.train.images[2, :, 0, 0].tolist() == [200, 100, 50]
    assert mixed.train.images[0, :, 0, 0].tolist() == [10, 10, 10]


def test_digits_read_from_the_bundled_file_are_scikit_learns_own() -> None:
    from sklearn.datasets import load_digits

    from edge_agent._data import _digits_arrays

    pixels, labels = _digits_arrays()
    bunch = load_digits()
    assert pixels.dtype == bunch.images.dtype and np.array_equal(pixels, bunch.images)
    assert np.array_equal(labels, bunch.target)
