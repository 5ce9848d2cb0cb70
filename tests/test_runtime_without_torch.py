"""The ONNX runtime without PyTorch, and the native ONNX Runtime library as the OnnxEngine's op.

Without PyTorch: a child interpreter in which `import torch` fails (a meta-path blocker in a
sitecustomize.py on PYTHONPATH) runs both ONNX flavors of the golden model through the Python
API and the CLI, with the golden's parity bound, and imports no torch module; `vimdeploy
export` there is one error line that says which install adds PyTorch.

The native library (plugins/onnxruntime): the one vimdeploy finds ($VIMDEPLOY_ORT_LIBRARY, the
one `pip install` built into the package), else tests/test_ort_library.py's, built with
`vimdeploy.ops.build.build_ort_library` where ONNX Runtime's C API header is found; the tests
that need it skip, saying so, where it cannot be.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vimdeploy.runtime import open_engine

from .test_export import golden_onnx  # noqa: F401 - the session's golden exports (both flavors)
from .test_golden import TOL
from .test_ort_library import ort_library  # noqa: F401 - built where the C API header is found
from .test_plugin_cuda import FP16_LOGITS_TOL

FLAVORS = ("plugin", "onnx")

# What stands for "PyTorch is not installed": every import of torch or a submodule fails.
NO_TORCH = """
import sys


class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)


sys.meta_path.insert(0, NoTorch())
"""

# The Python API in the child: each flavor's outputs to an .npz, what the engine says it is;
# then the modules that run artifacts are imported, and no torch module may have been.
CHILD = r"""
import json, sys
import numpy as np
from vimdeploy.runtime import open_engine

job = json.loads(sys.argv[1])
images = np.load(job["input"])
described = {}
for flavor, path in job["models"].items():
    with open_engine(path, scan_op=job["scan_op"]) as engine:
        np.savez(f"{job['out']}_{flavor}.npz", **engine.run(images, features=True))
        described[flavor] = engine.describe()
# What runs artifacts imports no torch either: the CLI, serving, evaluation, validation, bench.
import vimdeploy.bench, vimdeploy.cli, vimdeploy.evaluation, vimdeploy.serving, vimdeploy.validation  # noqa: E401
try:
    import torch
    blocked = False
except ModuleNotFoundError:
    blocked = True
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "torch")
print(json.dumps({"described": described, "torch_blocked": blocked, "torch_modules": loaded}, default=str))
"""


@pytest.fixture(scope="session")
def ort_library_file(request) -> Path:
    """The native ONNX Runtime library vimdeploy finds ($VIMDEPLOY_ORT_LIBRARY, the package's),
    else tests/test_ort_library.py's (built from ONNX Runtime's C API header where found)."""
    from vimdeploy.ops.native import ort_library_path

    return ort_library_path() or request.getfixturevalue("ort_library")


def no_torch_env(tmp_path: Path, **extra) -> dict:
    blocker = tmp_path / "no_torch"
    blocker.mkdir(exist_ok=True)
    (blocker / "sitecustomize.py").write_text(NO_TORCH)
    env = {k: v for k, v in os.environ.items() if k != "VIMDEPLOY_ORT_LIBRARY"}  # the library: only as asked
    return {**env, "PYTHONPATH": str(blocker), **extra}


def assert_golden(outputs, golden, count: int = 2):
    np.testing.assert_allclose(outputs["logits"], golden["logits"][:count], rtol=0, atol=TOL)
    np.testing.assert_allclose(outputs["features"], golden["features"][:count], rtol=0, atol=TOL)


def run_without_torch(golden, golden_onnx, tmp_path, scan_op: str, env: dict) -> dict:  # noqa: F811
    np.save(tmp_path / "input.npy", golden["input"])
    job = {
        "input": str(tmp_path / "input.npy"),
        "models": {flavor: str(golden_onnx[flavor]["output"]) for flavor in FLAVORS},
        "out": str(tmp_path / "out"),
        "scan_op": scan_op,
    }
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(job)], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["torch_blocked"] and report["torch_modules"] == []
    for flavor in FLAVORS:
        assert_golden(np.load(tmp_path / f"out_{flavor}.npz"), golden)
    return report["described"]


def test_both_flavors_without_torch_python_op(golden, golden_onnx, tmp_path):  # noqa: F811
    described = run_without_torch(golden, golden_onnx, tmp_path, "python", no_torch_env(tmp_path))
    assert described["plugin"]["scan_op"].startswith("Python op")
    assert "scan_op" not in described["onnx"]


def test_both_flavors_without_torch_native_library(golden, golden_onnx, ort_library_file, tmp_path):  # noqa: F811
    env = no_torch_env(tmp_path, VIMDEPLOY_ORT_LIBRARY=str(ort_library_file))
    described = run_without_torch(golden, golden_onnx, tmp_path, "library", env)
    assert described["plugin"]["scan_op"] == f"native ONNX Runtime library ({ort_library_file})"


def test_cli_without_torch_infers_and_says_what_export_needs(golden, golden_onnx, tmp_path):  # noqa: F811
    env = no_torch_env(tmp_path)
    vimdeploy = [sys.executable, "-m", "vimdeploy"]
    np.save(tmp_path / "x.npy", golden["input"][:1])
    for flavor in FLAVORS:
        out = tmp_path / f"{flavor}.npz"
        args = ["infer", str(golden_onnx[flavor]["output"]), "--input", str(tmp_path / "x.npy"), "-o", str(out)]
        done = subprocess.run([*vimdeploy, *args], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert_golden(np.load(out), golden, count=1)
    args = ["export", str(golden["checkpoint"]), "-o", str(tmp_path / "again.onnx")]
    done = subprocess.run([*vimdeploy, *args], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("error: ") and "pip install 'vimdeploy[export]'" in done.stderr
    assert not (tmp_path / "again.onnx").exists()


def test_the_engine_uses_the_native_library_where_built(golden, golden_onnx, ort_library_file, monkeypatch):  # noqa: F811
    monkeypatch.setenv("VIMDEPLOY_ORT_LIBRARY", str(ort_library_file))
    with open_engine(golden_onnx["plugin"]["output"]) as engine:  # scan_op "auto"
        assert engine.describe()["scan_op"] == f"native ONNX Runtime library ({ort_library_file})"
        assert_golden(engine.run(golden["input"], features=True), golden)


def test_the_library_runs_fp16_nodes_as_the_python_op_with_casts_does(ort_library_file, tmp_path, monkeypatch):
    """An fp16 export: the library takes the fp16 nodes as they are, the Python op gets exact
    fp32 casts around them; the two agree within the fp16 logits bound."""
    from vimdeploy.digits import WEIGHTS, digit_batch
    from vimdeploy.export import export_onnx
    from vimdeploy.export.precision import convert_precision

    export_onnx(WEIGHTS, tmp_path / "fp32.onnx", batch="dynamic")
    convert_precision(tmp_path / "fp32.onnx", tmp_path / "fp16.onnx", "fp16")
    monkeypatch.setenv("VIMDEPLOY_ORT_LIBRARY", str(ort_library_file))
    x = digit_batch()[0][:8]
    with open_engine(tmp_path / "fp16.onnx", scan_op="library") as library:
        native = library.run(x)["logits"]
    with open_engine(tmp_path / "fp16.onnx", scan_op="python") as python:
        emulated = python.run(x)["logits"]
    np.testing.assert_allclose(native, emulated, rtol=0, atol=FP16_LOGITS_TOL)


def test_scan_op_library_where_none_is_built_says_how_to_build_it(golden_onnx, monkeypatch):  # noqa: F811
    from vimdeploy.export import ort_op
    from vimdeploy.ops.native import PluginError

    monkeypatch.delenv("VIMDEPLOY_ORT_LIBRARY", raising=False)
    monkeypatch.setattr(ort_op, "ort_library_path", lambda: None)
    with pytest.raises(PluginError, match="ONNXRUNTIME_INCLUDE_DIR"):
        open_engine(golden_onnx["plugin"]["output"], scan_op="library")
    assert open_engine(golden_onnx["plugin"]["output"]).describe()["scan_op"].startswith("Python op")
