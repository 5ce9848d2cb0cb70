"""`vimdeploy validate`: pass within tolerance, exit 1 beyond it, JSON for scripts."""

import json

import pytest
import torch
from PIL import Image

from vimdeploy.export import export_onnx
from vimdeploy.validation import TOLERANCES

from .conftest import small_model


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A 2-layer model, its plugin-flavor export, and a different checkpoint of the same shape."""
    d = tmp_path_factory.mktemp("validate")
    torch.save({"model": small_model(seed=3).state_dict()}, d / "right.pth")
    torch.save({"model": small_model(seed=4).state_dict()}, d / "wrong.pth")
    export_onnx(d / "right.pth", d / "model.onnx", batch="dynamic")
    Image.new("RGB", (300, 260), (10, 200, 30)).save(d / "green.png")
    return d


def test_validate_passes_against_its_own_checkpoint(cli, artifact):
    result = cli("validate", artifact / "model.onnx", "--ref", artifact / "right.pth", "--batch", "2",
                 "--images", artifact / "green.png", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["precision"] == "fp32"
    assert report["sets"]["random"]["inputs"] == 2 and report["sets"]["photos"]["inputs"] == 1
    assert report["overall"]["max_abs"] <= TOLERANCES["fp32"].max_abs
    assert report["overall"]["top1"] == 1.0 and report["overall"]["min_cosine"] > 0.99999
    assert report["sets"]["random"]["features"]["max_abs"] < 1e-4


def test_validate_fails_beyond_tolerance_with_a_table(cli, artifact):
    result = cli("validate", artifact / "model.onnx", "--ref", artifact / "wrong.pth", "--batch", "1",
                 "--images", artifact)
    assert result.exit_code == 1
    assert "FAIL" in result.stdout and "max abs" in result.stdout and "Traceback" not in result.output


def test_atol_overrides_the_default(cli, artifact):
    result = cli("validate", artifact / "model.onnx", "--ref", artifact / "wrong.pth", "--batch", "1",
                 "--images", artifact / "green.png", "--atol", "1e9", "--json")
    report = json.loads(result.stdout)
    assert report["tolerance"]["max_abs"] == 1e9
    # cosine / top-1 limits of fp32 still apply: two different models disagree.
    assert result.exit_code == (0 if report["passed"] else 1)


def test_validate_on_sample_photographs(cli, artifact):
    pytest.importorskip("skimage.data")
    result = cli("validate", artifact / "model.onnx", "--ref", artifact / "right.pth", "--batch", "0", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["photos"][0] == "skimage.data.chelsea" and report["sets"]["photos"]["inputs"] == 4


def test_validate_refuses_a_missing_artifact(cli, artifact, tmp_path):
    result = cli("validate", tmp_path / "nope.onnx", "--ref", artifact / "right.pth")
    assert result.exit_code == 1 and "no such file" in result.stderr
