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
    result = cli(
        "validate",
        artifact / "model.onnx",
        "--ref",
        artifact / "right.pth",
        "--batch",
        "2",
        "--images",
        artifact / "green.png",
        "--json",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and report["precision"] == "fp32"
    assert report["sets"]["random"]["inputs"] == 2 and report["sets"]["photos"]["inputs"] == 1
    assert report["overall"]["max_abs"] <= TOLERANCES["fp32"].max_abs
    assert report["overall"]["top1"] == 1.0 and report["overall"]["min_cosine"] > 0.99999
    assert report["sets"]["random"]["features"]["max_abs"] < 1e-4


def test_validate_fails_beyond_tolerance_with_a_table(cli, artifact):
    result = cli(
        "validate", artifact / "model.onnx", "--ref", artifact / "wrong.pth", "--batch", "1", "--images", artifact
    )
    assert result.exit_code == 1
    assert "FAIL" in result.stdout and "max abs" in result.stdout and "Traceback" not in result.output


def test_atol_overrides_the_default(cli, artifact):
    result = cli(
        "validate",
        artifact / "model.onnx",
        "--ref",
        artifact / "wrong.pth",
        "--batch",
        "1",
        "--images",
        artifact / "green.png",
        "--atol",
        "1e9",
        "--json",
    )
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


def poisoned(src, dst, output: str, value: float, index: int | None = None):
    """A copy of the export `src` whose `output` has `value` added: everywhere, or at one class `index`
    (the other entries kept, so that top-1 agreement and the rest of the table still look right)."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(src)
    graph = model.graph
    out = next(o for o in graph.output if o.name == output)
    width = out.type.tensor_type.shape.dim[-1].dim_value
    for node in graph.node:
        node.output[:] = [f"{output}_raw" if n == output else n for n in node.output]
    shift = np.zeros(width, np.float32)
    shift[slice(None) if index is None else index] = value
    graph.initializer.append(numpy_helper.from_array(shift, f"{output}_shift"))
    graph.node.append(helper.make_node("Add", [f"{output}_raw", f"{output}_shift"], [output]))
    onnx.save(model, dst)
    return dst


@pytest.mark.parametrize(
    "output, value, index",
    [
        ("logits", float("nan"), -1),  # one NaN class, far from the top: max abs NaN, top-1 still agrees
        ("logits", float("nan"), None),  # every logit NaN
        ("features", float("nan"), None),
        ("features", float("inf"), 0),
    ],
)
def test_non_finite_output_never_passes(cli, artifact, tmp_path, output, value, index):
    path = poisoned(artifact / "model.onnx", tmp_path / "poisoned.onnx", output, value, index)
    result = cli(
        "validate", path, "--ref", artifact / "right.pth", "--batch", "2", "--images", artifact / "green.png", "--json"
    )
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert not report["passed"] and report["nonfinite"]["artifact"][output] > 0
    assert any("NaN/inf" in f and f.startswith(output) for f in report["failures"])


def test_non_finite_reference_never_passes(cli, artifact, monkeypatch):
    """NaN on the reference's side (a checkpoint that computes NaN) fails as well."""
    import numpy as np

    from vimdeploy.runtime.torch_backend import TorchEngine

    real = TorchEngine._infer

    def nan_features(self, images, names):
        out = real(self, images, names)
        return {**out, "features": np.full_like(out["features"], np.nan)} if "features" in out else out

    monkeypatch.setattr(TorchEngine, "_infer", nan_features)
    result = cli(
        "validate",
        artifact / "model.onnx",
        "--ref",
        artifact / "right.pth",
        "--batch",
        "1",
        "--images",
        artifact / "green.png",
        "--json",
    )
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["nonfinite"]["artifact"] == {} and list(report["nonfinite"]["reference"]) == ["features"]
    assert report["failures"][0].startswith("features: ") and "reference" in report["failures"][0]


def test_evaluate_refuses_non_finite_logits(cli, artifact, tmp_path):
    """An accuracy computed over NaN logits would mean nothing: one error line, exit 1."""
    for label in ("a", "b"):
        (tmp_path / "data" / label).mkdir(parents=True)
        Image.new("RGB", (240, 240), (200, 10, 30)).save(tmp_path / "data" / label / "x.png")
    poisoned(artifact / "model.onnx", tmp_path / "poisoned.onnx", "logits", float("nan"), -1)
    assert cli("evaluate", artifact / "model.onnx", "--data", tmp_path / "data").exit_code == 0
    result = cli("evaluate", artifact / "model.onnx", tmp_path / "poisoned.onnx", "--data", tmp_path / "data")
    assert result.exit_code == 1
    # as a terminal shows it: a progress bar's carriage returns overwrite the line
    lines = [line.split("\r")[-1] for line in result.stderr.strip().split("\n")]
    assert [line for line in lines if line.strip()] == [lines[-1]]
    assert lines[-1].startswith("error:") and "poisoned.onnx" in lines[-1] and "NaN/inf" in lines[-1]
