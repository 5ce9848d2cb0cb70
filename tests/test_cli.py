"""The command line as users and scripts use it."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vimdeploy.data import load_images, preprocess

from .conftest import small_model


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "small.pth"
    torch.save({"model": small_model().state_dict()}, path)
    return path


def test_preprocess_is_deit_eval_transform():
    """256x256 input: the resize to 256 is the identity, then a 16-pixel-border center crop."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    out = preprocess(Image.fromarray(pixels), 224)
    crop = pixels[16:240, 16:240].astype(np.float32) / 255.0
    expected = ((crop - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(2, 0, 1)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


def test_preprocess_resizes_the_shorter_side_to_256():
    image = Image.new("RGB", (600, 300), (255, 0, 0))
    assert preprocess(image, 224).shape == (3, 224, 224)
    # A gray image stays gray (mode conversion and normalisation only).
    out = preprocess(Image.new("L", (100, 80), 128), 224)
    np.testing.assert_allclose(out[0], (128 / 255 - 0.485) / 0.229, atol=1e-5)


def test_predict_on_a_real_photo_with_json(cli, golden, tmp_path):
    skimage_data = pytest.importorskip("skimage.data")
    Image.fromarray(skimage_data.chelsea()).save(tmp_path / "cat.png")
    result = cli("predict", golden["checkpoint"], tmp_path / "cat.png", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) == 1 and len(rows[0]["top"]) == 5
    probs = [t["probability"] for t in rows[0]["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1
    # Same numbers as running the model on the same preprocessing by hand.
    from vimdeploy.model import load_model

    model, _ = load_model(golden["checkpoint"])
    with torch.inference_mode():
        logits = model(torch.from_numpy(load_images([tmp_path / "cat.png"])))
    assert rows[0]["top"][0]["index"] == int(logits.argmax())
    assert isinstance(rows[0]["top"][0]["name"], str) and rows[0]["top"][0]["name"]


def test_predict_human_output_names_classes(cli, small_ckpt, tmp_path):
    Image.new("RGB", (300, 260), (10, 200, 30)).save(tmp_path / "green.jpg")
    result = cli("predict", small_ckpt, tmp_path / "green.jpg")
    assert result.exit_code == 0 and "%" in result.output and result.output.count("\n") == 6


def test_predict_bad_image(cli, small_ckpt, tmp_path):
    (tmp_path / "x.jpg").write_text("nope")
    result = cli("predict", small_ckpt, tmp_path / "x.jpg")
    assert result.exit_code == 1 and "cannot read image" in result.output


def test_infer_writes_logits_and_features_and_replaces_atomically(cli, small_ckpt, tmp_path):
    x = np.random.default_rng(1).standard_normal((3, 3, 224, 224), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "out.npz"
    out.write_bytes(b"old")
    result = cli("infer", small_ckpt, "--input", tmp_path / "x.npy", "-o", out, "--features", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["logits"] == [3, 1000] and summary["features"] == [3, 192]
    got = np.load(out)
    model = small_model()
    with torch.inference_mode():
        np.testing.assert_allclose(got["logits"], model(torch.from_numpy(x)).numpy(), rtol=0, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz", "x.npy"]  # no temporary left behind


@pytest.mark.parametrize(
    "array,needle",
    [
        (np.zeros((2, 224, 224), np.float32), "expected an NCHW batch"),
        (np.zeros((1, 3, 230, 230), np.float32), "does not fit the patch grid"),
        (np.zeros((0, 3, 224, 224), np.float32), "empty"),
    ],
)
def test_infer_bad_inputs(cli, small_ckpt, tmp_path, array, needle):
    np.save(tmp_path / "x.npy", array)
    result = cli("infer", small_ckpt, "--input", tmp_path / "x.npy", "-o", tmp_path / "o.npz")
    assert result.exit_code == 1 and needle in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o.npz").exists()


def test_infer_unknown_artifact(cli, tmp_path):
    (tmp_path / "m.xyz").write_text("?")
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 224, 224), np.float32))
    result = cli("infer", tmp_path / "m.xyz", "--input", tmp_path / "x.npy", "-o", tmp_path / "o.npz")
    assert result.exit_code == 1 and "don't know how to run" in result.output


def test_info_json(cli, golden):
    result = cli("info", golden["checkpoint"], "--json")
    data = json.loads(result.output)
    assert data["model"]["parameters"] == 7_148_008 and data["model"]["tokens"] == 197
    assert data["file"]["weights_from"] == "model"


def test_demo_runs_end_to_end(cli, tmp_path):
    result = cli("demo", "-o", tmp_path / "demo", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["untrained"] is True
    assert report["stages"]["infer"]["fast_vs_reference_max_abs"] < 1e-4
