"""`vimdeploy validate A --ref B`: every pair of checkpoint, ONNX, engine and saved outputs;
pass within tolerance, exit 1 beyond it, JSON for scripts, saved outputs read strictly."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vimdeploy.contract import PRECISIONS
from vimdeploy.export import export_onnx
from vimdeploy.export.precision import convert_precision
from vimdeploy.validation import TOLERANCES, artifact_precision
from vimdeploy.validation.inputs import PACKAGED_CALIBRATION, recorded_calibration
from vimdeploy.validation.tolerances import looser

from .conftest import small_model


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """A 2-layer model, its plugin-flavor export, a different checkpoint of the same shape, an
    image, and the reference's outputs saved by `validate --save-ref`."""
    d = tmp_path_factory.mktemp("validate")
    torch.save({"model": small_model(seed=3).state_dict()}, d / "right.pth")
    torch.save({"model": small_model(seed=4).state_dict()}, d / "wrong.pth")
    export_onnx(d / "right.pth", d / "model.onnx", batch="dynamic")
    Image.new("RGB", (300, 260), (10, 200, 30)).save(d / "green.png")
    return d


@pytest.fixture(scope="module")
def saved(artifact):
    """right.pth's outputs on 2 random inputs and the green image, written by `validate --save-ref`."""
    from click.testing import CliRunner

    from vimdeploy.cli import main

    path = artifact / "ref.npz"
    args = ["validate", artifact / "model.onnx", "--ref", artifact / "right.pth", "--save-ref", path]
    result = CliRunner().invoke(main, [str(a) for a in [*args, "--images", artifact / "green.png"]])
    assert result.exit_code == 0, result.output
    return path


def run(cli, *args):
    """`validate ... --json`: (exit code, report); a report is printed whether it passed or not."""
    result = cli("validate", *args, "--json")
    assert "Traceback" not in result.output and result.stdout, result.output
    return result.exit_code, json.loads(result.stdout)


def error_line(result) -> str:
    """The `error: ...` line of a refusal on stderr (after the progress lines), with what follows it."""
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "\nerror: " in "\n" + result.stderr, result.stderr
    return result.stderr[("\n" + result.stderr).index("\nerror: ") :]


def poisoned(src, dst, output: str, value: float, index: int | None = None):
    """A copy of the export `src` whose `output` has `value` added: everywhere, or at one class `index`
    (the other entries kept, so that top-1 agreement and the rest of the table still look right)."""
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


# ---- checkpoint vs ONNX ----


def test_onnx_passes_against_its_own_checkpoint(cli, artifact):
    code, report = run(
        cli, artifact / "model.onnx", "--ref", artifact / "right.pth", "--images", artifact / "green.png"
    )
    assert code == 0 and report["passed"] and report["precision"] == "fp32"
    assert report["kinds"] == {"artifact": "onnx", "reference": "checkpoint"}
    assert report["sets"]["random"]["inputs"] == 2 and report["sets"]["photos"]["inputs"] == 1
    assert report["outputs"] == ["logits", "features"]
    for s in report["sets"].values():  # every output held to fp32's bounds, not the logits alone
        for name in ("logits", "features"):
            assert s["outputs"][name]["max_abs"] <= TOLERANCES["fp32"]["random"].atol
            assert s["outputs"][name]["cosine"] > 0.99999
        assert s["outputs"]["logits"]["top1"] == 1.0


def test_onnx_fails_against_another_checkpoint_with_a_table(cli, artifact):
    result = cli("validate", artifact / "model.onnx", "--ref", artifact / "wrong.pth", "--images", artifact)
    assert result.exit_code == 1
    assert "FAIL" in result.stdout and "max abs" in result.stdout and "Traceback" not in result.output


@pytest.mark.parametrize(
    "flags, check",
    [
        (("--atol", "1e-12"), "max abs"),  # fp32 parity is ~1e-6, not bit-exact
        (("--atol", "0", "--rtol", "1e-12"), "max rel"),  # an element passes on either bound
        (("--cosine", "1"), "cosine"),  # 1 - cosine ~1e-12 here, far above float64's rounding
    ],
)
def test_each_bound_can_fail(cli, artifact, flags, check):
    """Each flag replaces the table's bound and is checked on every input set."""
    code, report = run(cli, artifact / "model.onnx", "--ref", artifact / "right.pth", "--batch", "1", *flags)
    for flag, value in zip(flags[::2], flags[1::2]):
        key = flag.lstrip("-")
        assert report["tolerance"]["random"][key] == report["tolerance"]["images"][key] == float(value)
    assert code == 1 and any(check in f for f in report["failures"]), report["failures"]


def test_top_k_compares_the_classes_as_a_set(cli, artifact):
    code, report = run(cli, artifact / "model.onnx", "--ref", artifact / "right.pth", "--batch", "3", "--top-k", "5")
    assert code == 0 and report["tolerance"]["random"]["top_k"] == 5
    loose = ("--atol", "1e9", "--cosine", "-1", "--top-k", "5")  # only the top-5 check left to fail
    code, report = run(cli, artifact / "model.onnx", "--ref", artifact / "wrong.pth", "--batch", "3", *loose)
    assert code == 1 and report["failures"] and all("top-5 agreement" in f for f in report["failures"])


def test_validate_on_sample_photographs(cli, artifact):
    pytest.importorskip("skimage.data")
    code, report = run(cli, artifact / "model.onnx", "--ref", artifact / "right.pth", "--batch", "0")
    assert code == 0
    assert report["sets"]["photos"]["from"][0] == "skimage.data.chelsea" and report["sets"]["photos"]["inputs"] == 4


def test_validate_refuses_a_missing_artifact(cli, artifact, tmp_path):
    result = cli("validate", tmp_path / "nope.onnx", "--ref", artifact / "right.pth")
    assert "no such file" in error_line(result)


# ---- ONNX vs ONNX, checkpoint vs checkpoint ----


def test_onnx_vs_onnx_takes_the_looser_precision(cli, artifact, tmp_path):
    convert_precision(artifact / "model.onnx", tmp_path / "fp16.onnx", "fp16")
    code, report = run(
        cli, tmp_path / "fp16.onnx", "--ref", artifact / "model.onnx", "--images", artifact / "green.png"
    )
    assert report["precisions"] == {"artifact": "fp16", "reference": "fp32"} and report["precision"] == "fp16"
    assert report["tolerance"]["random"]["atol"] is None  # fp16's row: no fp32 atol
    assert code == 0, report["failures"]
    shifted = poisoned(artifact / "model.onnx", tmp_path / "shifted.onnx", "features", 0.5)
    code, report = run(cli, shifted, "--ref", artifact / "model.onnx", "--images", artifact / "green.png")
    assert code == 1 and any(": features: " in f for f in report["failures"]), report["failures"]


def test_checkpoint_vs_checkpoint(cli, artifact):
    code, report = run(cli, artifact / "right.pth", "--ref", artifact / "right.pth", "--batch", "1")
    assert code == 0 and report["outputs"] == ["logits", "features", "feature_map"]
    code, report = run(cli, artifact / "wrong.pth", "--ref", artifact / "right.pth", "--batch", "1")
    assert code == 1 and {f.split(": ")[1] for f in report["failures"]} >= {"logits", "features", "feature_map"}


# ---- saved outputs ----


def test_save_ref_writes_the_inputs_and_the_references_outputs(artifact, saved):
    with np.load(saved, allow_pickle=False) as npz:
        assert sorted(npz.files) == ["features", "input", "logits", "precision", "set"]
        assert list(npz["set"]) == ["random", "random", "photos"] and str(npz["precision"]) == "fp32"
        x, logits = npz["input"], npz["logits"]
    from vimdeploy.runtime import open_engine

    with open_engine(artifact / "right.pth") as engine:  # what the checkpoint computes from the saved inputs
        np.testing.assert_allclose(engine.run(x)["logits"], logits, atol=1e-5)


def test_onnx_vs_saved_outputs_replays_the_inputs(cli, artifact, saved, tmp_path):
    code, report = run(cli, artifact / "model.onnx", "--ref", saved)
    assert code == 0 and report["kinds"]["reference"] == "saved"
    assert {n: s["inputs"] for n, s in report["sets"].items()} == {"random": 2, "photos": 1}
    shifted = poisoned(artifact / "model.onnx", tmp_path / "shifted.onnx", "logits", 1e-3)
    code, report = run(cli, shifted, "--ref", saved)
    assert code == 1 and any("logits: max abs" in f for f in report["failures"]), report["failures"]


def test_saved_outputs_vs_checkpoint(cli, artifact, saved):
    code, report = run(cli, saved, "--ref", artifact / "right.pth")
    assert code == 0 and report["kinds"] == {"artifact": "saved", "reference": "checkpoint"}
    code, report = run(cli, saved, "--ref", artifact / "wrong.pth")
    assert code == 1


def test_saved_vs_saved_needs_the_same_inputs(cli, artifact, saved, tmp_path):
    code, _ = run(cli, saved, "--ref", saved)
    assert code == 0
    with np.load(saved) as npz:
        arrays = {k: npz[k] for k in npz.files}
    np.savez(tmp_path / "other.npz", **{**arrays, "input": arrays["input"] + 1})
    result = cli("validate", tmp_path / "other.npz", "--ref", saved)
    assert "other inputs" in error_line(result)


def test_saved_vs_saved_needs_no_torch(saved):
    """Comparing saved outputs imports no PyTorch (torch made unimportable in a fresh interpreter)."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from vimdeploy.cli import main\n"
        f"main(['validate', {str(saved)!r}, '--ref', {str(saved)!r}, '--json'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["passed"]


def test_saved_inputs_exclude_other_input_options(cli, artifact, saved):
    result = cli("validate", artifact / "model.onnx", "--ref", saved, "--images", artifact / "green.png")
    assert "inputs come from" in error_line(result)


def test_golden_checkpoint_against_the_official_outputs(cli, golden):
    """The golden's expected.npz (official code's outputs, no `set`) is a reference as it is."""
    code, report = run(cli, golden["checkpoint"], "--ref", golden["dir"] / "vim_t_p16_seed30.expected.npz")
    assert code == 0, report["failures"]
    assert list(report["sets"]) == ["saved"] and report["sets"]["saved"]["inputs"] == 2
    assert report["outputs"] == ["logits", "features"]


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"logits": np.zeros((2, 10), np.float32)}, "--save-ref OUT.npz` writes outputs with their inputs"),  # infer's
        ({"input": np.zeros((2, 3, 8), np.float32), "logits": np.zeros((2, 10))}, "(N, 3, H, W)"),
        ({"input": np.zeros((2, 3, 8, 8), np.int64), "logits": np.zeros((2, 10))}, "(N, 3, H, W)"),
        ({"input": np.zeros((2, 3, 8, 8), np.float32), "logits": np.zeros((3, 10))}, "2 rows"),
        ({"input": np.zeros((2, 3, 8, 8), np.float32), "logits": np.zeros((2, 10), np.int32)}, "float array"),
        ({"input": np.zeros((2, 3, 8, 8), np.float32), "logits": np.zeros((2, 10)), "set": np.zeros(2)}, "strings"),
        (
            {"input": np.zeros((2, 3, 8, 8), np.float32), "logits": np.zeros((2, 10)), "precision": np.array("int4")},
            "precision",
        ),
        ({"input": np.full((1, 3, 8, 8), np.nan, np.float32), "logits": np.zeros((1, 10))}, "NaN"),
        ({"input": np.zeros((1, 3, 8, 8), np.float32), "logits": np.array([[object()]], dtype=object)}, "float"),
    ],
)
def test_saved_outputs_are_read_strictly(cli, artifact, tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    result = cli("validate", path, "--ref", artifact / "right.pth")
    assert message in error_line(result), result.stderr


def test_a_file_that_is_not_an_npz_is_refused(cli, artifact, tmp_path):
    npy = io.BytesIO()
    np.save(npy, np.zeros(3))
    for content in (b"PK\x03\x04 not really a zip", npy.getvalue()):
        (tmp_path / "bad.npz").write_bytes(content)
        result = cli("validate", tmp_path / "bad.npz", "--ref", artifact / "right.pth")
        assert "not a readable .npz" in error_line(result), result.stderr


# ---- engines (TensorRT does not run here: the sidecar and the refusal) ----


def _fake_engine(tmp_path, precision=None):
    path = tmp_path / "model.plan"
    path.write_bytes(b"not an engine")
    if precision:
        (tmp_path / "model.plan.json").write_text(json.dumps({"format": "vimdeploy-engine/1", "precision": precision}))
    return path


def test_an_engines_precision_comes_from_its_sidecar(tmp_path):
    assert artifact_precision(_fake_engine(tmp_path, "int8")) == ("int8", None)
    (tmp_path / "model.plan.json").unlink()
    precision, note = artifact_precision(tmp_path / "model.plan")
    assert precision == "fp32" and "no sidecar" in note


@pytest.mark.parametrize("side", ["artifact", "reference"])
def test_an_engine_without_tensorrt_is_one_error_line(cli, artifact, tmp_path, side):
    from vimdeploy.tensorrt.imports import TensorRTMissing, import_tensorrt

    with contextlib.suppress(TensorRTMissing):
        import_tensorrt()
        pytest.skip("TensorRT is installed here: the fake engine would reach it")
    engine = _fake_engine(tmp_path, "fp16")
    pair = (engine, artifact / "right.pth") if side == "artifact" else (artifact / "right.pth", engine)
    result = cli("validate", pair[0], "--ref", pair[1])
    assert "TensorRT" in error_line(result), result.stderr


# ---- quantized artifacts: in-distribution inputs too ----


def test_int8_runs_its_calibration_images_and_the_data_folder(cli, artifact, tmp_path):
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (240, 240, 3), dtype=np.uint8)).save(calib / f"{i}.png")
    convert_precision(artifact / "model.onnx", tmp_path / "int8.onnx", "int8", calib=calib, cache_dir=None)
    code, report = run(cli, tmp_path / "int8.onnx", "--ref", artifact / "right.pth", "--batch", "1")
    assert report["precision"] == "int8" and set(report["sets"]) == {"random", "photos", "calibration"}
    assert report["sets"]["calibration"]["kind"] == "images" and report["sets"]["calibration"]["inputs"] == 4
    assert code == (0 if report["passed"] else 1)
    code, report = run(cli, tmp_path / "int8.onnx", "--ref", artifact / "right.pth", "--data", calib, "--limit", "2")
    assert set(report["sets"]) == {"random", "photos", "data"} and report["sets"]["data"]["inputs"] == 2


def test_a_recorded_calibration_folder_falls_back_to_the_packaged_set():
    moved = {"precision_info": json.dumps({"calibration_dir": "/elsewhere/digits"})}
    assert recorded_calibration(moved) == (PACKAGED_CALIBRATION / "digits", None)
    folder, note = recorded_calibration({"precision_info": json.dumps({"calibration_dir": "/elsewhere/mine"})})
    assert folder is None and "not on this machine" in note
    folder, note = recorded_calibration({})
    assert folder is None and "--data" in note


def test_every_precision_has_a_row_ordered_strict_to_loose():
    assert set(PRECISIONS) <= set(TOLERANCES)
    assert looser("fp32", "int8") == looser("int8", "fp32") == "int8" and looser("fp16", "fp32") == "fp16"
    for row in TOLERANCES.values():
        assert set(row) == {"random", "images"}


# ---- non-finite outputs ----


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
    code, report = run(cli, path, "--ref", artifact / "right.pth", "--images", artifact / "green.png")
    assert code == 1 and not report["passed"] and report["nonfinite"]["artifact"][output] > 0
    assert any("NaN/inf" in f and f.startswith(output) for f in report["failures"])


def test_non_finite_reference_never_passes(cli, artifact, monkeypatch):
    """NaN on the reference's side (a checkpoint that computes NaN) fails as well."""
    from vimdeploy.runtime.torch_backend import TorchEngine

    real = TorchEngine._infer

    def nan_features(self, images, names):
        out = real(self, images, names)
        return {**out, "features": np.full_like(out["features"], np.nan)} if "features" in out else out

    monkeypatch.setattr(TorchEngine, "_infer", nan_features)
    code, report = run(
        cli,
        artifact / "model.onnx",
        "--ref",
        artifact / "right.pth",
        "--batch",
        "1",
        "--images",
        artifact / "green.png",
    )
    assert code == 1
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
