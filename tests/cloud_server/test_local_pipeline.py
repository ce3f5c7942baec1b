"""The local-pipeline generator, with a tiny Stable Diffusion pipeline this test builds and saves itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud_server import StrategyConfig, make_strategy
from cloud_server.learning._genfl_config import GenflConfig
from cloud_server.learning._strategy import DeviceInfo
from protocol import ConfigError, TrainConfig, decode_synthetic

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

DIGITS = tuple(str(i) for i in range(10))


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised text-to-image pipeline of a few thousand weights, saved like a real one."""
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=2,
    )  # fmt: skip
    vae = diffusers.AutoencoderKL(
        block_out_channels=[8, 16], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=4, sample_size=16,
    )  # fmt: skip
    characters = list("abcdefghijklmnopqrstuvwxyz0123456789")
    words = ["<|startoftext|>", "<|endoftext|>", *characters, *(c + "</w>" for c in characters)]
    tokenizer = transformers.CLIPTokenizer(vocab={w: i for i, w in enumerate(words)}, merges=[], model_max_length=16)
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16, intermediate_size=32, num_attention_heads=2,
        num_hidden_layers=1, vocab_size=len(words), max_position_embeddings=16,
    ))  # fmt: skip
    pipeline = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=diffusers.DDIMScheduler(clip_sample=False), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("pipeline")
    pipeline.save_pretrained(folder)
    return folder


def test_the_pipeline_makes_model_sized_uint8_images_offline(
    pipeline_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloud_server.learning._local_pipeline import LocalPipelineGenerator

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # loading must not reach for the network
    generator = LocalPipelineGenerator("cnn-digits", pipeline_dir, DIGITS, inference_steps=2)
    labels = np.array([0, 3, 3, 9])
    images = generator.sample(labels, seed=4)
    assert images.shape == (4, 1, 8, 8) and images.dtype == np.uint8  # 16x16 RGB -> 8x8 grey
    assert np.array_equal(generator.sample(labels, seed=4), images)
    assert generator.ready
    rgb = LocalPipelineGenerator("cnn-small", pipeline_dir, DIGITS, inference_steps=1)
    assert rgb.sample(np.array([1]), seed=0).shape == (1, 3, 32, 32)  # resized up to CIFAR size


def test_genfl_with_a_local_pipeline_sends_batches_from_the_first_synthetic_round(pipeline_dir: Path) -> None:
    genfl = GenflConfig(generator="local-pipeline", pipeline_path=str(pipeline_dir),
                        synthetic_budget_kb=1)  # fmt: skip
    strategy = make_strategy(StrategyConfig(strategy="genfl", genfl=genfl), model_name="cnn-digits",
                             classes=tuple("0123456789"))  # fmt: skip
    counts = (10.0,) * 9 + (0.0,)
    batches = strategy.configure_synthetic(2, _state(), {"d": TrainConfig()}, {"d": DeviceInfo(90, counts)}).synthetic
    batch = decode_synthetic(batches["d"], (1, 8, 8), 10)
    assert set(batch.labels.tolist()) == {9} and 0 < len(batch) <= 1024 // 72


def test_a_folder_without_a_saved_pipeline_is_a_config_error(tmp_path: Path) -> None:
    from cloud_server.learning._local_pipeline import LocalPipelineGenerator

    with pytest.raises(ConfigError, match="no saved diffusers pipeline"):
        LocalPipelineGenerator("cnn-digits", tmp_path, DIGITS)
    with pytest.raises(ConfigError, match="one name per class"):
        LocalPipelineGenerator("cnn-digits", tmp_path, ("cat", "dog"))


@pytest.mark.slow  # runs the CLI and a whole GenFL simulation from the pool
def test_generate_pool_grows_a_content_addressed_pool_that_genfl_draws_from(pipeline_dir: Path, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    # Execute: the real command, twice with the same seed: the same images, so the pool holds each once
    pool = tmp_path / "pool"
    command = [sys.executable, "-m", "cloud_server", "generate-pool", "--pipeline-path", str(pipeline_dir),
               "--classes", ",".join(DIGITS), "--per-class", "2", "--model", "cnn-digits", "--inference-steps", "2",
               "--out", str(pool)]  # fmt: skip
    first = subprocess.run([*command, "--seed", "1"], capture_output=True, text=True, timeout=300)
    again = subprocess.run([*command, "--seed", "1"], capture_output=True, text=True, timeout=300)
    # Assert
    assert first.returncode == again.returncode == 0, first.stderr[-2000:]
    assert "images/s" in first.stdout
    files = sorted(pool.glob("*/*.png"))
    assert len(files) == 20 and all(len(p.stem) == 64 for p in files)  # named by their sha256: no duplicates
    manifest = json.loads((pool / "pool.json").read_text())
    assert manifest["held"]["3"] == 2 and manifest["images_per_second"] > 0
    print(f"pool generation with the test's tiny pipeline: {manifest['images_per_second']:.1f} images/s")
    # Execute + Assert: GenFL draws each device's lacking classes from it, from the first synthetic round
    genfl = GenflConfig(generator="pool", synthetic_pool=str(pool), synthetic_budget_kb=1)
    strategy = make_strategy(StrategyConfig(strategy="genfl", genfl=genfl), model_name="cnn-digits",
                             classes=tuple("0123456789"))  # fmt: skip
    batches = strategy.configure_synthetic(
        2, _state(), {"d": TrainConfig()}, {"d": DeviceInfo(90, (10.0,) * 9 + (0.0,))}
    ).synthetic
    batch = decode_synthetic(batches["d"], (1, 8, 8), 10)
    assert set(batch.labels.tolist()) == {9}


def test_an_operators_folder_of_class_named_images_is_a_pool(tmp_path: Path) -> None:
    from PIL import Image

    from cloud_server.learning._pool import PoolGenerator

    for name in DIGITS:
        (tmp_path / name).mkdir()
        Image.fromarray(np.full((16, 16, 3), int(name) * 20, dtype=np.uint8)).save(tmp_path / name / "a.jpg")
    generator = PoolGenerator("cnn-digits", tmp_path, DIGITS)
    images = generator.sample(np.array([0, 5, 5]), seed=1)
    assert images.shape == (3, 1, 8, 8) and images[1].mean() > images[0].mean()  # resized, grey, its own class
    (tmp_path / "7" / "a.jpg").unlink()
    with pytest.raises(ConfigError, match="no images of class '7'"):
        generator.sample(np.array([7]), seed=1)  # re-read after the folder changed


def _state() -> dict[str, object]:
    import models

    return models.model_state(models.build_model("cnn-digits", seed=0))  # type: ignore[return-value]


def _copy(pipeline_dir: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(pipeline_dir, tmp_path / "pipeline"))


def test_a_pipeline_folder_that_holds_code_is_refused_before_anything_is_loaded(
    pipeline_dir: Path, tmp_path: Path
) -> None:
    from cloud_server.learning._local_pipeline import LocalPipelineGenerator

    folder = _copy(pipeline_dir, tmp_path)
    ran = tmp_path / "ran"
    (folder / "unet" / "my_unet.py").write_text(f"open({str(ran)!r}, 'w').close()\n")
    with pytest.raises(ConfigError, match=r"Python files \(unet/my_unet.py\)"):
        LocalPipelineGenerator("cnn-digits", folder, DIGITS)
    assert not ran.exists()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("_class_name", "MyPipeline", "pipeline class 'MyPipeline' is not one diffusers ships"),
        ("_class_name", ["pipeline", "MyPipeline"], "is not one diffusers ships"),
        ("unet", ["my_unet", "MyUNet"], "component unet comes from"),
    ],
)
def test_a_custom_pipeline_or_component_is_refused(
    pipeline_dir: Path, tmp_path: Path, key: str, value: object, message: str
) -> None:
    import json

    from cloud_server.learning._local_pipeline import LocalPipelineGenerator

    folder = _copy(pipeline_dir, tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    index[key] = value
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ConfigError, match=message):
        LocalPipelineGenerator("cnn-digits", folder, DIGITS)


def test_weights_that_are_corrupt_or_pickled_end_in_one_config_error(pipeline_dir: Path, tmp_path: Path) -> None:
    import pickle

    from cloud_server.learning._local_pipeline import LocalPipelineGenerator

    folder = _copy(pipeline_dir, tmp_path)
    (weights,) = (folder / "unet").glob("*.safetensors")
    weights.write_bytes(b"\xff" * 64)  # a header length far past the file
    with pytest.raises(ConfigError, match="cannot load the pipeline"):
        LocalPipelineGenerator("cnn-digits", folder, DIGITS)
    weights.unlink()  # only a pickle left: refused (use_safetensors), never unpickled
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(ConfigError, match="cannot load the pipeline"):
        LocalPipelineGenerator("cnn-digits", folder, DIGITS)
