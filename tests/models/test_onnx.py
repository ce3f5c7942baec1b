"""ONNX export and inference: real exports, real onnxruntime sessions, real CLIs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import models
from edge_agent import load_dataset
from edge_agent._predict import OnnxClassifier
from models._onnx import export_onnx
from protocol import DataError, ModelError, encode_tensors

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """cnn-digits trained for two quick epochs, saved as a checkpoint like simulate writes."""
    data = load_dataset("digits")
    model = models.build_model("cnn-digits", seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    for _ in range(3):
        models.train_one_epoch(model, data.train.images, data.train.labels, optimizer, batch_size=32, rng=rng)
    state = models.model_state(model)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    path.write_bytes(encode_tensors(state, {"model": "cnn-digits"}))
    return path, state


def test_fp32_and_int8_exports_agree_with_pytorch(trained: tuple[Path, dict], tmp_path: Path) -> None:
    _, state = trained
    data = load_dataset("digits")
    fp32 = export_onnx("cnn-digits", state, tmp_path / "m.onnx", int8=False, check_images=data.test.images,
                       classes=data.classes)  # fmt: skip
    int8 = export_onnx("cnn-digits", state, tmp_path / "m8.onnx", int8=True, check_images=data.test.images,
                       calibration_images=data.train.images[:512], classes=data.classes)  # fmt: skip
    assert fp32.max_abs_diff < 1e-3 and fp32.top1_agreement == 1.0
    assert int8.top1_agreement >= 0.95
    assert int8.size_bytes < fp32.size_bytes
    onnx.checker.check_model(str(tmp_path / "m8.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(tmp_path / "m8.onnx")).graph.node)
    # the batch axis is dynamic: one image or many
    classifier = OnnxClassifier(tmp_path / "m.onnx")
    assert (classifier.channels, classifier.height, classifier.width) == (1, 8, 8)
    assert classifier.classes == list(data.classes)


def test_the_mlp_trains_quantization_aware_and_exports_to_agreeing_fp32_and_int8(tmp_path: Path) -> None:
    # Prepare: the DP model (no BatchNorm, no convolution) trained int8-aware for three epochs
    data = load_dataset("digits")
    model = models.build_model("mlp-digits", seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    with models.fake_quantized(model):
        for _ in range(3):
            models.train_one_epoch(model, data.train.images, data.train.labels, optimizer, batch_size=32, rng=rng)
    state = models.model_state(model)
    assert models.evaluate(model, data.test.images, data.test.labels).accuracy > 0.85
    # Execute
    fp32 = export_onnx("mlp-digits", state, tmp_path / "m.onnx", int8=False, check_images=data.test.images,
                       classes=data.classes)  # fmt: skip
    int8 = export_onnx("mlp-digits", state, tmp_path / "m8.onnx", int8=True, check_images=data.test.images,
                       calibration_images=data.train.images[:512], classes=data.classes)  # fmt: skip
    # Assert
    assert fp32.max_abs_diff < 1e-3 and fp32.top1_agreement == 1.0
    assert int8.top1_agreement >= 0.97 and int8.size_bytes < fp32.size_bytes
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(tmp_path / "m8.onnx")).graph.node)
    assert OnnxClassifier(tmp_path / "m8.onnx").classes == list(data.classes)


@pytest.mark.slow
def test_server_export_and_edge_predict_clis(trained: tuple[Path, dict], tmp_path: Path) -> None:
    checkpoint, _ = trained
    out = tmp_path / "digits-int8.onnx"
    done = subprocess.run([BIN / "genfl-server", "export", "--format", "onnx", "--int8", "--checkpoint",
                           str(checkpoint), "--out", str(out)], capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "top-1 agreement" in done.stdout and out.is_file()
    data = load_dataset("digits")
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(20):
        Image.fromarray(data.test.images[index, 0]).save(folder / f"{index:02d}.png")
    done = subprocess.run([BIN / "genfl-edge", "predict", "--model", str(out), str(folder)],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 20
    predicted = [int(line.split("\t")[1]) for line in lines]
    assert np.mean(np.array(predicted) == data.test.labels[:20]) >= 0.8
    assert all(0.0 < float(line.split("\t")[2]) <= 1.0 for line in lines)


def test_bad_model_files_and_images_fail_clearly(trained: tuple[Path, dict], tmp_path: Path) -> None:
    checkpoint, state = trained
    good = tmp_path / "m.onnx"
    export_onnx("cnn-digits", state, good, int8=False, check_images=load_dataset("digits").test.images[:64])
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(good.read_bytes()[:500])
    with pytest.raises(ModelError, match="not a usable ONNX model"):
        OnnxClassifier(truncated)
    cut_checkpoint = tmp_path / "cut.safetensors"
    cut_checkpoint.write_bytes(checkpoint.read_bytes()[:-100])
    with pytest.raises(ModelError, match="not a readable safetensors checkpoint"):
        models.read_checkpoint(cut_checkpoint)
    # an ONNX file whose input is not an image batch
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "flat",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 64])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 64])],
    )  # fmt: skip
    flat = tmp_path / "flat.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(flat))
    with pytest.raises(ModelError, match="not one \\(batch, channels, height, width\\) image tensor"):
        OnnxClassifier(flat)
    big = tmp_path / "big.png"
    Image.new("L", (32, 32)).save(big)
    with pytest.raises(DataError, match=r"big\.png is 32x32; the model takes 8x8"):
        OnnxClassifier(good).predict([big])


def test_predict_reports_each_bad_image_goes_on_and_resizes_on_request(
    trained: tuple[Path, dict], tmp_path: Path
) -> None:
    # Prepare: two good images, one that is not an image, one of the wrong size
    _, state = trained
    data = load_dataset("digits")
    model = tmp_path / "m.onnx"
    export_onnx("cnn-digits", state, model, int8=False, check_images=data.test.images[:64], classes=data.classes)
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(2):
        Image.fromarray(data.test.images[index, 0]).save(folder / f"good-{index}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.fromarray(np.kron(data.test.images[2, 0], np.ones((4, 4), dtype=np.uint8))).save(folder / "large.png")
    command = [str(BIN / "genfl-edge"), "predict", "--model", str(model), str(folder)]
    # Execute
    plain = subprocess.run(command, capture_output=True, text=True)
    resized = subprocess.run([*command, "--resize"], capture_output=True, text=True)
    # Assert: the good ones printed, each bad one named on stderr, exit 3 (data) at the end
    assert plain.returncode == 3, plain.stderr
    assert sorted(Path(line.split("\t")[0]).name for line in plain.stdout.splitlines()) == ["good-0.png", "good-1.png"]
    assert "broken.png" in plain.stderr and "large.png is 32x32; the model takes 8x8 (--resize" in plain.stderr
    assert "2 image(s) could not be classified" in plain.stderr
    assert resized.returncode == 3 and "large.png" in resized.stdout and "broken.png" in resized.stderr


def test_a_model_that_outputs_nan_is_a_model_error(tmp_path: Path) -> None:
    # Prepare: an image model whose scores are log(-1) = NaN
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Flatten", ["x"], ["flat"]), onnx.helper.make_node("Neg", ["flat"], ["negative"]),
         onnx.helper.make_node("Sub", ["negative", "one"], ["below"]), onnx.helper.make_node("Log", ["below"], ["y"])],
        "nan", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 1, 8, 8])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 64])],
        initializer=[onnx.helper.make_tensor("one", onnx.TensorProto.FLOAT, [], [1.0])],
    )  # fmt: skip
    path = tmp_path / "nan.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(path))
    image = tmp_path / "x.png"
    Image.new("L", (8, 8), color=7).save(image)
    # Execute
    done = subprocess.run([str(BIN / "genfl-edge"), "predict", "--model", str(path), str(image)],
                          capture_output=True, text=True)  # fmt: skip
    # Assert: refused as a broken model (exit 4), nothing printed as a prediction
    assert done.returncode == 4 and done.stdout == "", done.stderr
    assert "not finite (NaN or inf): the model is broken" in done.stderr


@pytest.mark.slow
def test_a_float_export_needs_no_device_images_and_int8_says_where_to_calibrate(tmp_path: Path) -> None:
    # Prepare: a cnn-small checkpoint (a secured server holds no images like the boards')
    checkpoint = tmp_path / "small.safetensors"
    checkpoint.write_bytes(encode_tensors(models.model_state(models.build_model("cnn-small", seed=0)),
                                          {"model": "cnn-small"}))  # fmt: skip
    base = [str(BIN / "genfl-server"), "export", "--format", "onnx", "--checkpoint", str(checkpoint)]
    # Execute
    fp32 = subprocess.run([*base, "--out", str(tmp_path / "small.onnx")], capture_output=True, text=True)
    int8 = subprocess.run([*base, "--int8", "--out", str(tmp_path / "small8.onnx")], capture_output=True, text=True)
    # Assert: float written after a parity check on generated images, with progress; int8 refused with the ways
    assert fp32.returncode == 0, fp32.stderr
    assert "generated images" in fp32.stderr and "exporting cnn-small" in fp32.stderr
    assert "top-1 agreement 100.00%" in fp32.stdout
    assert OnnxClassifier(tmp_path / "small.onnx").height == 32
    assert int8.returncode == 2 and "--calibration" in int8.stderr and "genfl-edge export --int8" in int8.stderr
    assert not (tmp_path / "small8.onnx").exists()
