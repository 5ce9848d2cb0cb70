"""`vimdeploy build` and the TensorRT runtime backend.

What runs everywhere: the clean failure without TensorRT (TensorRT hidden from the import
system where it is installed), the option/profile/precision helpers, the sidecar check
(a pure function, fed fake sidecars). What needs TensorRT + cuda-python + a GPU (+ the
plugin library, built with `vimdeploy plugin build --tensorrt-root ...`): a real build of
the bundled digits model, engine runs (numpy, torch, CUDA graph) against PyTorch, the
sidecar, `vimdeploy infer` / `predict` on the .plan. Those skip with the reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vimdeploy.errors import ArtifactError, InputError
from vimdeploy.tensorrt import TENSORRT_MISSING, check_sidecar
from vimdeploy.tensorrt.builder import (
    apply_timing_cache,
    make_profile,
    parse_range,
    resolve_precision,
    save_timing_cache,
)

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "vimdeploy" / "assets" / "vim_digits.pth"


# ---------------------------------------------------------------------------- without TensorRT


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Make `import tensorrt` fail as it does where TensorRT is not installed."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


def test_build_without_tensorrt_fails_cleanly(cli, no_tensorrt, tmp_path):
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"not parsed: the TensorRT check comes first")
    out = tmp_path / "model.plan"
    result = cli("build", onnx_path, "-o", out)
    assert result.exit_code == 1
    assert not out.exists() and not (tmp_path / "model.plan.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary left either


def test_build_without_tensorrt_message(no_tensorrt, tmp_path, capsys):
    from click.testing import CliRunner

    from vimdeploy.cli import main

    (tmp_path / "m.onnx").write_bytes(b"x")
    result = CliRunner().invoke(main, ["build", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.plan")])
    text = result.output + (result.stderr if hasattr(result, "stderr") else "")
    assert result.exit_code == 1
    assert "pip install tensorrt" in text and "vimdeploy infer model.onnx" in text
    assert "Traceback" not in text


def test_build_without_tensorrt_subprocess(tmp_path):
    """The real command line: exit 1, the message on stderr, no traceback, no output."""
    from vimdeploy.tensorrt import TensorRTMissing, import_tensorrt

    try:  # not `import tensorrt`: with tensorrt-stubs installed that imports a namespace package
        import_tensorrt()
        pytest.skip("TensorRT is installed here; the in-process tests cover the failure path")
    except TensorRTMissing:
        pass
    (tmp_path / "m.onnx").write_bytes(b"x")
    r = subprocess.run(
        [sys.executable, "-m", "vimdeploy", "build", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.plan")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert r.returncode == 1
    assert "pip install tensorrt" in r.stderr and "vimdeploy infer model.onnx" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not (tmp_path / "m.plan").exists()


def test_existing_output_is_kept_without_force(cli, tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"x")
    (tmp_path / "m.plan").write_bytes(b"old engine")
    result = cli("build", tmp_path / "m.onnx", "-o", tmp_path / "m.plan")
    assert result.exit_code == 1 and "already exists" in result.output
    assert (tmp_path / "m.plan").read_bytes() == b"old engine"


def test_open_engine_plan_without_tensorrt(no_tensorrt, tmp_path):
    from vimdeploy.runtime import open_engine
    from vimdeploy.tensorrt import TensorRTMissing

    (tmp_path / "m.plan").write_bytes(b"x")
    with pytest.raises(TensorRTMissing, match="pip install tensorrt"):
        open_engine(tmp_path / "m.plan")


def test_missing_message_names_alternatives():
    assert "pip install tensorrt" in TENSORRT_MISSING and "vimdeploy infer model.onnx" in TENSORRT_MISSING


@pytest.mark.parametrize("flag", ["--int8", "--fp16"])
def test_build_precision_uses_the_tensorrt_preset_recipe(cli, monkeypatch, tmp_path, flag):
    """`build --int8` converts with exactly the tensorrt-int8 preset's recipe (max calibration,
    nothing excluded beyond convert's default of keeping out_proj float), as `export --preset
    tensorrt-int8` does: one recipe."""
    from vimdeploy.tensorrt import builder

    seen = {}
    monkeypatch.setattr(
        builder,
        "build_engine",
        lambda model, output, **kw: (
            seen.update(kw)
            or {
                "output": str(output),
                "size_mb": 0.0,
                "precision": kw["precision"],
                "tensorrt": "x",
                "gpu": "x",
                "sidecar": "x",
            }
        ),
    )
    (tmp_path / "m.onnx").write_bytes(b"x")
    result = cli("build", tmp_path / "m.onnx", "-o", tmp_path / "m.plan", flag, "--calib", tmp_path)
    assert result.exit_code == 0, result.output
    preset = json.loads((REPO / "vimdeploy" / "export" / "presets" / f"tensorrt-{flag[2:]}.json").read_text())
    options = seen["convert_options"]
    assert options["calib"] == tmp_path
    if flag == "--int8":
        assert options["method"] == preset["calib_method"] == "max"
        assert list(options["exclude"]) == preset.get("exclude", []) == []
    else:
        assert ",".join(options["keep_fp32"]) == preset["keep_fp32"]


# ---------------------------------------------------------------------------- pure helpers


def test_parse_range():
    assert parse_range("1:8:32") == (1, 8, 32)
    assert parse_range("4") == (4, 4, 4)
    assert parse_range(None) is None
    for bad in ("8:1:32", "0:1:2", "a:b:c", "1:2", "1:2:3:4"):
        with pytest.raises(InputError):
            parse_range(bad)


def test_resolve_precision():
    assert resolve_precision("fp32", None) is None
    assert resolve_precision("fp16", None) is None
    assert resolve_precision("fp16", "fp16") is None
    assert resolve_precision("fp32", "fp16") == "fp16"
    assert resolve_precision("fp32", "int8") == "int8"
    with pytest.raises(InputError, match="strongly typed"):
        resolve_precision("fp16", "int8")
    with pytest.raises(InputError):
        resolve_precision("int8", "fp16")


def test_make_profile():
    dyn = make_profile([None, 3, 224, 224], (1, 8, 32), None)
    assert dyn == {"min": [1, 3, 224, 224], "opt": [8, 3, 224, 224], "max": [32, 3, 224, 224]}
    assert make_profile([None, 3, 224, 224], None, None)["max"][0] == 32  # default 1:8:32
    assert make_profile([4, 3, 224, 224], None, None) == {k: [4, 3, 224, 224] for k in ("min", "opt", "max")}
    with pytest.raises(InputError, match="fixed batch"):
        make_profile([4, 3, 224, 224], (1, 8, 32), None)
    res = make_profile([None, 3, None, None], (1, 2, 4), (224, 224, 448))
    assert res["max"] == [4, 3, 448, 448]
    with pytest.raises(InputError, match="dynamic resolution"):
        make_profile([None, 3, None, None], (1, 2, 4), None)
    with pytest.raises(InputError, match="fixed 224x224"):
        make_profile([None, 3, 224, 224], None, (224, 224, 448))


SIDECAR = {
    "tensorrt": "10.12.0.36",
    "gpu": "NVIDIA H100 80GB HBM3",
    "compute_capability": "9.0",
    "plugin": {"path": "/x/libvimdeploy_trt_plugin.so", "sha256": "a" * 64},
}


def test_check_sidecar_match():
    here = {"tensorrt": "10.12.0.36", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    assert check_sidecar(SIDECAR, here, "a" * 64) == ([], [])


def test_check_sidecar_mismatches():
    here = {"tensorrt": "11.1.0.7", "gpu": "NVIDIA A100-SXM4-40GB", "compute_capability": "8.0"}
    errors, warns = check_sidecar(SIDECAR, here, "b" * 64)
    text = "\n".join(errors)
    assert len(errors) == 3, errors
    assert "TensorRT 10.12.0.36" in text and "11.1.0.7" in text
    assert "compute capability 9.0" in text and "8.0" in text
    assert "another plugin library" in text
    assert warns == []


def test_check_sidecar_same_capability_other_gpu_warns():
    here = {"tensorrt": "10.12.0.36", "gpu": "NVIDIA H200", "compute_capability": "9.0"}
    errors, warns = check_sidecar(SIDECAR, here, None)
    assert errors == [] and len(warns) == 1 and "H200" in warns[0]


def test_sidecar_mismatch_stops_loading(monkeypatch, tmp_path):
    """The backend refuses before deserializing, with the check's message (fakes for TensorRT/CUDA)."""
    import types

    from vimdeploy.runtime import tensorrt_backend as tb

    fake_trt = types.SimpleNamespace(__version__="11.1.0.7")
    monkeypatch.setattr(tb, "import_tensorrt", lambda: fake_trt)
    monkeypatch.setattr(tb, "import_cudart", lambda: types.SimpleNamespace(cudaSetDevice=lambda d: (0,)))
    monkeypatch.setattr(
        tb,
        "current_machine",
        lambda version, device=0: {"tensorrt": "11.1.0.7", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"},
    )
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"engine")
    (tmp_path / "m.plan.json").write_text(json.dumps({**SIDECAR, "plugin": None}))
    with pytest.raises(ArtifactError, match="TensorRT 10.12.0.36"):
        tb.TensorRTEngine(plan)


def test_only_type_stubs_is_tensorrt_missing(monkeypatch, tmp_path):
    """tensorrt-stubs alone leaves an importable namespace package `tensorrt` without TensorRT."""
    from vimdeploy.tensorrt import TensorRTMissing, import_tensorrt

    (tmp_path / "tensorrt").mkdir()
    (tmp_path / "tensorrt" / "__init__.pyi").write_text("__version__: str\n")
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TensorRTMissing, match="only type stubs"):
        import_tensorrt()


class FakeCache:
    def serialize(self):
        return b"learned"


class FakeConfig:
    """The IBuilderConfig calls of the timing-cache steps, as TensorRT answers on a mismatch."""

    def __init__(self, accept=True, keep=True):
        self.accept, self.keep, self.set_with = accept, keep, None

    def create_timing_cache(self, data):
        return FakeCache()

    def set_timing_cache(self, cache, ignore_mismatch):
        self.set_with = ignore_mismatch
        return self.accept

    def get_timing_cache(self):
        return FakeCache() if self.keep else None


def test_timing_cache_from_another_gpu_is_ignored_not_fatal(tmp_path):
    cache = tmp_path / "other_gpu.cache"
    cache.write_bytes(b"from another GPU")
    config, warned = FakeConfig(), []
    assert apply_timing_cache(config, cache, warn=warned.append)
    assert config.set_with is True  # a mismatching cache is ignored, as Polygraphy does
    refused = FakeConfig(accept=False)
    assert not apply_timing_cache(refused, cache, warn=warned.append) and "without one" in warned[-1]


def test_saving_a_missing_timing_cache_never_raises(tmp_path):
    """get_timing_cache() may return None after a refused cache: the built engine must not be lost."""
    warned = []
    assert not save_timing_cache(FakeConfig(keep=False), tmp_path / "t.cache", warn=warned.append)
    assert warned and not (tmp_path / "t.cache").exists()
    assert save_timing_cache(FakeConfig(), tmp_path / "t.cache", warn=warned.append)
    assert (tmp_path / "t.cache").read_bytes() == b"learned"


# ---------------------------------------------------------------------------- with TensorRT


@pytest.fixture(scope="module")
def trt_env():
    from vimdeploy.tensorrt import TensorRTMissing, import_tensorrt

    try:  # not importorskip: tensorrt-stubs alone makes `import tensorrt` succeed
        trt = import_tensorrt()
    except TensorRTMissing:
        pytest.skip("TensorRT's Python package is not installed (pip install tensorrt)")
    pytest.importorskip("cuda.bindings", reason="cuda-python is not installed (pip install 'cuda-python>=12')")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU")
    from vimdeploy.ops import native as plugin

    if "trt_plugin" not in plugin.library_paths():
        pytest.skip("the TensorRT plugin is not built (vimdeploy plugin build --tensorrt-root ...)")
    return trt


@pytest.fixture(scope="module")
def digits_plan(trt_env, tmp_path_factory):
    from vimdeploy.export import export_onnx
    from vimdeploy.tensorrt.builder import build_engine

    d = tmp_path_factory.mktemp("trt")
    export_onnx(DIGITS, d / "digits.onnx", batch="dynamic", scan="plugin")
    build_engine(d / "digits.onnx", d / "digits.plan", batch="1:4:8", timing_cache=d / "timing.cache", progress=False)
    return d


@pytest.mark.tensorrt
@pytest.mark.cuda
def test_build_sidecar(digits_plan, trt_env):
    side = json.loads((digits_plan / "digits.plan.json").read_text())
    assert side["tensorrt"] == trt_env.__version__
    assert side["precision"] == "fp32" and side["profiles"][0]["max"] == [8, 3, 32, 32]
    assert side["plugin"]["sha256"] and len(side["onnx"]["sha256"]) == 64
    assert (digits_plan / "timing.cache").stat().st_size > 0


@pytest.mark.tensorrt
@pytest.mark.cuda
@pytest.mark.parametrize("batch", [1, 3, 8, 11])  # 11 > max 8: run in chunks
def test_engine_matches_pytorch(digits_plan, batch):
    import torch

    from vimdeploy.runtime import open_engine

    x = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
    ref = open_engine(DIGITS).run(x, features=True)
    engine = open_engine(digits_plan / "digits.plan")
    out = engine.run(x, features=True)
    for k in ("logits", "features"):
        np.testing.assert_allclose(out[k], ref[k], atol=1e-3, rtol=1e-3)
    # torch on the GPU: bound by data_ptr, torch out
    t = engine.run(torch.from_numpy(x).cuda(), features=True)
    assert t["logits"].is_cuda
    np.testing.assert_allclose(t["logits"].cpu().numpy(), out["logits"], atol=1e-5)
    graphed = open_engine(digits_plan / "digits.plan", cuda_graph=True)
    for _ in range(2):  # capture, then replay
        np.testing.assert_allclose(graphed.run(x)["logits"], out["logits"], atol=1e-5)


@pytest.mark.tensorrt
@pytest.mark.cuda
def test_cli_infer_on_plan(digits_plan, cli, tmp_path):
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = cli("infer", digits_plan / "digits.plan", "--input", tmp_path / "x.npy", "-o", tmp_path / "o.npz")
    assert result.exit_code == 0
    assert np.load(tmp_path / "o.npz")["logits"].shape == (2, 10)
