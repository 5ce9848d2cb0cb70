"""The native ONNX Runtime custom-op library (plugins/onnxruntime): built with CMake against ONNX
Runtime's C API header and loaded by a plain `onnxruntime.InferenceSession` in a child process
that imports only onnxruntime and numpy (no vimdeploy, no torch: what another team's ONNX Runtime
application does).

The header ships in no package (it is in ONNX Runtime's release archives): the library is built
where $ONNXRUNTIME_INCLUDE_DIR, else ../ext/onnxruntime/include beside the checkout, holds
onnxruntime_c_api.h, and every test here skips, saying so, where none does. $VIMDEPLOY_ORT_LIBRARY
names a library built elsewhere instead.

Bounds: those of the CPU kernel's own tests (tests/test_scan.py `close`: fp32 error relative to
the output's scale 2e-5, fp16 rounding of the output 1e-3) against the fp64 recurrence; the golden
parity bounds of tests/test_golden.py (fp32) and tests/test_plugin_cuda.py (fp16 logits)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from vimdeploy.contract import ACTIVATIONS, DOMAIN, INPUT_NAMES, OP_TYPE, PLUGIN_NAMESPACE, PLUGIN_VERSION
from vimdeploy.ops.build import build_ort_library

from .conftest import REPO
from .test_golden import TOL
from .test_plugin_cuda import FP16_LOGITS_TOL
from .test_scan import close, reference64, scan_inputs

ERROR_EXIT = 3  # the child's exit status when ONNX Runtime raised

# Run in a fresh interpreter: onnxruntime + numpy only, as any ONNX Runtime user would.
CHILD = r"""
import json, sys
import numpy as np
import onnxruntime as ort

job = json.loads(sys.argv[1])
so = ort.SessionOptions()
so.register_custom_ops_library(job["library"])
so.log_severity_level = 4
try:
    session = ort.InferenceSession(job["model"], so, providers=["CPUExecutionProvider"])
    feed = dict(np.load(job["inputs"]))
    outputs = session.run(None, feed)
except Exception as e:
    print(f"{type(e).__name__}: {e}")
    sys.exit(3)
np.savez(job["outputs"], *outputs)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("vimdeploy", "torch"))
if leaked:
    print("imported", leaked)
    sys.exit(4)
"""


def header_dir() -> Path | None:
    for d in (os.environ.get("ONNXRUNTIME_INCLUDE_DIR"), REPO.parent / "ext" / "onnxruntime" / "include"):
        if d and (Path(d) / "onnxruntime_c_api.h").is_file():
            return Path(d)
    return None


@pytest.fixture(scope="session")
def ort_library(tmp_path_factory) -> Path:
    prebuilt = os.environ.get("VIMDEPLOY_ORT_LIBRARY")
    if prebuilt:
        return Path(prebuilt)
    include = header_dir()
    if include is None:
        pytest.skip(
            "ONNX Runtime's C API header (onnxruntime_c_api.h) not found: set ONNXRUNTIME_INCLUDE_DIR "
            "to the include/ of an ONNX Runtime release to build and test plugins/onnxruntime"
        )
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found")
    return build_ort_library(include, tmp_path_factory.mktemp("ort_library"))


def run_child(library: Path, model, feed: dict, tmp_path: Path, env: dict | None = None):
    """(outputs, None) or (None, the exception's text) from a plain ONNX Runtime session."""
    model_path = tmp_path / "model.onnx"
    model_path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    np.savez(tmp_path / "inputs.npz", **feed)
    job = {
        "library": str(library),
        "model": str(model_path),
        "inputs": str(tmp_path / "inputs.npz"),
        "outputs": str(tmp_path / "outputs.npz"),
    }
    done = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(job)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=tmp_path,
    )
    # A signal (negative status) means the process crashed instead of raising.
    assert done.returncode in (0, ERROR_EXIT), f"exit status {done.returncode}\n{done.stdout}{done.stderr}"
    if done.returncode == ERROR_EXIT:
        return None, done.stdout
    outputs = np.load(tmp_path / "outputs.npz")
    return [outputs[f"arr_{i}"] for i in range(len(outputs.files))], None


def run_ok(library: Path, model, feed: dict, tmp_path: Path, env: dict | None = None) -> list[np.ndarray]:
    outputs, error = run_child(library, model, feed, tmp_path, env)
    assert error is None, error
    return outputs


def node_model(activation=TensorProto.FLOAT, types: dict | None = None, **attrs):
    """One BiSelectiveScan node; graph inputs of no declared shape (the op checks shapes itself).
    An attribute given as None is left off the node."""
    attrs = {
        "delta_softplus": 1,
        "out_scale": 0.5,
        "plugin_version": PLUGIN_VERSION,
        "plugin_namespace": PLUGIN_NAMESPACE,
        **attrs,
    }
    attrs = {k: v for k, v in attrs.items() if v is not None}
    types = {n: activation if i < 9 else TensorProto.FLOAT for i, n in enumerate(INPUT_NAMES)} | (types or {})
    inputs = [helper.make_tensor_value_info(n, types[n], None) for n in INPUT_NAMES]
    node = helper.make_node(OP_TYPE, list(INPUT_NAMES), ["y"], domain=DOMAIN, **attrs)
    graph = helper.make_graph(
        [node], "bi_selective_scan", inputs, [helper.make_tensor_value_info("y", activation, None)]
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)], ir_version=10
    )


def feed_of(inputs) -> dict:
    return {n: t.numpy() for n, t in zip(INPUT_NAMES, inputs)}


@pytest.mark.parametrize(
    "b,L,E,softplus,scale", [(1, 1, 16, True, 0.5), (2, 197, 48, True, 0.5), (3, 61, 40, False, 1.0)]
)
def test_one_node_fp32_matches_fp64_recurrence(ort_library, tmp_path, b, L, E, softplus, scale):
    inputs = scan_inputs(b, L, E, seed=L + E)
    if not softplus:  # without softplus dt must already be a positive step size
        inputs = inputs._replace(
            dt_fwd=inputs.dt_fwd.abs() * 0.3,
            dt_bwd=inputs.dt_bwd.abs() * 0.3,
            dt_bias_fwd=inputs.dt_bias_fwd.abs(),
            dt_bias_bwd=inputs.dt_bias_bwd.abs(),
        )
    (y,) = run_ok(ort_library, node_model(delta_softplus=int(softplus), out_scale=scale), feed_of(inputs), tmp_path)
    assert y.dtype == np.float32 and y.shape == (b, L, E)
    ok, err = close(torch.from_numpy(y), reference64(inputs, delta_softplus=softplus, out_scale=scale))
    assert ok, f"off by {err}"


def test_one_node_fp16_activations_match_fp64_recurrence(ort_library, tmp_path):
    inputs = scan_inputs(2, 300, 40, seed=11, dtype=torch.float16)
    (y,) = run_ok(ort_library, node_model(TensorProto.FLOAT16), feed_of(inputs), tmp_path)
    assert y.dtype == np.float16 and y.shape == (2, 300, 40)
    ok, err = close(torch.from_numpy(y), reference64(inputs), rel=1e-3)
    assert ok, f"off by {err}"


def test_thread_count_from_the_environment_does_not_change_the_result(ort_library, tmp_path):
    feed = feed_of(scan_inputs(3, 50, 72, seed=2))
    (one,) = run_ok(ort_library, node_model(), feed, tmp_path, env={"VIMDEPLOY_CPU_THREADS": "1"})
    (many,) = run_ok(ort_library, node_model(), feed, tmp_path, env={"VIMDEPLOY_CPU_THREADS": "3"})
    np.testing.assert_array_equal(one, many)


def _resize(feed, name, shape):
    return {**feed, name: np.zeros(shape, feed[name].dtype)}


B, L, E = 2, 9, 32
HOSTILE = {
    "inconsistent L": (lambda f: _resize(f, "x_fwd", (B, L + 1, E)), {}, "input 1 'x_fwd' has shape (2, 10, 32)"),
    "D of length 1": (
        lambda f: _resize(f, "D_fwd", (1,)),
        {},
        "input 11 'D_fwd' has shape (1,), expected (E,) = (32,)",
    ),
    "A 1x1": (
        lambda f: _resize(f, "A_bwd", (1, 1)),
        {},
        "input 10 'A_bwd' has shape (1, 1), expected (E, N) = (32, 16)",
    ),
    "d_state 8": (lambda f: _resize(f, "C_bwd", (B, L, 8)), {}, "input 8 'C_bwd' has shape (2, 9, 8)"),
    "z of rank 2": (lambda f: _resize(f, "z", (L, E)), {}, "input 0 'z' must have rank 3"),
    "dt_bias of rank 2": (lambda f: _resize(f, "dt_bias_bwd", (E, 1)), {}, "input 14 'dt_bias_bwd' has shape (32, 1)"),
    "NaN out_scale": (lambda f: f, {"out_scale": float("nan")}, "out_scale must be a finite number"),
    "inf out_scale": (lambda f: f, {"out_scale": float("inf")}, "out_scale must be a finite number"),
    "delta_softplus 2": (lambda f: f, {"delta_softplus": 2}, "delta_softplus must be 0 or 1, got 2"),
    "plugin_version 2": (lambda f: f, {"plugin_version": "2"}, "plugin_version is '2'"),
    "no out_scale": (lambda f: f, {"out_scale": None}, "attribute out_scale"),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=str)
def test_hostile_node_raises_and_names_the_problem(ort_library, tmp_path, case):
    """Each breaks the contract in a way ONNX Runtime's type checks cannot see: the session must
    raise an exception with the op's message, never crash or read out of bounds."""
    change_feed, attrs, message = HOSTILE[case]
    feed = change_feed(feed_of(scan_inputs(B, L, E, seed=1)))
    outputs, error = run_child(ort_library, node_model(**attrs), feed, tmp_path)
    assert outputs is None, f"{case}: ran instead of raising"
    assert f"{DOMAIN}::{OP_TYPE}" in error and message in error, error


@pytest.mark.parametrize(
    "types,feed_dtypes",
    [
        ({"A_fwd": TensorProto.DOUBLE}, {"A_fwd": np.float64}),
        ({"x_bwd": TensorProto.FLOAT16}, {"x_bwd": np.float16}),
        ({n: TensorProto.DOUBLE for n in INPUT_NAMES[:9]}, {n: np.float64 for n in INPUT_NAMES[:9]}),
    ],
    ids=["fp64 A", "mixed activations", "fp64 activations"],
)
def test_wrong_dtypes_are_refused_with_an_exception(ort_library, tmp_path, types, feed_dtypes):
    """Types no kernel of the library takes: ONNX Runtime refuses the model (its own message)."""
    feed = feed_of(scan_inputs(B, L, E, seed=1))
    feed.update({n: feed[n].astype(t) for n, t in feed_dtypes.items()})
    outputs, error = run_child(ort_library, node_model(types=types), feed, tmp_path)
    assert outputs is None and error


def test_node_with_an_input_missing_is_refused_with_an_exception(ort_library, tmp_path):
    model = node_model()
    del model.graph.node[0].input[-1]
    del model.graph.input[-1]
    feed = feed_of(scan_inputs(B, L, E, seed=1))
    del feed[INPUT_NAMES[-1]]
    outputs, error = run_child(ort_library, model, feed, tmp_path)
    assert outputs is None and "input size 14" in error, error


def test_library_exports_only_register_custom_ops_and_links_no_onnxruntime(ort_library):
    if shutil.which("nm") is None or shutil.which("readelf") is None:
        pytest.skip("binutils (nm, readelf) not found")
    symbols = subprocess.run(
        ["nm", "-D", "--defined-only", str(ort_library)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert [s for s in symbols if not s[0].isdigit() and len(s) > 1] == ["RegisterCustomOps"]
    dynamic = subprocess.run(["readelf", "-d", str(ort_library)], capture_output=True, text=True, check=True).stdout
    needed = [line.split()[-1] for line in dynamic.splitlines() if "(NEEDED)" in line]
    assert needed and not [n for n in needed if "onnxruntime" in n], needed


def export_plugin_onnx(checkpoint: Path, out: Path, precision: str = "fp32") -> Path:
    """`vimdeploy export CHECKPOINT -o OUT --scan plugin --batch dynamic --precision PRECISION`."""
    command = ["export", str(checkpoint), "-o", str(out), "--scan", "plugin", "--batch", "dynamic"]
    subprocess.run(
        [sys.executable, "-m", "vimdeploy", *command, "--precision", precision],
        check=True,
        capture_output=True,
        text=True,
    )
    return out


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def golden_plugin_onnx(request, golden, tmp_path_factory) -> tuple[str, Path]:
    precision = request.param
    out = tmp_path_factory.mktemp("golden_onnx") / f"vim_t_plugin_{precision}.onnx"
    return precision, export_plugin_onnx(golden["checkpoint"], out, precision)


def test_golden_through_plain_onnxruntime_with_the_library(ort_library, golden, golden_plugin_onnx, tmp_path):
    """The plugin-flavor export of the golden checkpoint, run by ONNX Runtime alone. fp16: the
    scan nodes take fp16 activations (the library's fp16 kernel runs), within the golden fp16
    tests' logits bound."""
    precision, path = golden_plugin_onnx
    model = onnx.load(path)
    typed = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    scans = [n for n in model.graph.node if n.op_type == OP_TYPE and n.domain == DOMAIN]
    want = TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT
    assert scans and all(typed[n.input[0]] == want for n in scans)
    logits, features = run_ok(ort_library, path.read_bytes(), {"images": golden["input"]}, tmp_path)
    if precision == "fp32":
        assert np.abs(logits - golden["logits"]).max() <= TOL
        assert np.abs(features - golden["features"]).max() <= TOL
    else:
        assert np.abs(logits - golden["logits"]).max() <= FP16_LOGITS_TOL


def test_the_library_source_takes_the_contract_from_scan_params_h():
    """The C++ source names the op, its inputs and d_state through scan_params.h's macros (which
    tests/test_contract.py checks against vimdeploy.contract), never by spelling them again."""
    source = (REPO / "plugins" / "onnxruntime" / "bi_selective_scan_ort.cpp").read_text()
    for macro in (
        "VIMDEPLOY_SCAN_DOMAIN",
        "VIMDEPLOY_SCAN_OP_TYPE",
        "VIMDEPLOY_SCAN_INPUT_NAMES",
        "VIMDEPLOY_SCAN_D_STATE",
        "VIMDEPLOY_SCAN_PLUGIN_VERSION",
    ):
        assert macro in source, macro
    assert f'"{OP_TYPE}"' not in source and f'"{DOMAIN}"' not in source
    assert f"kNumActivations = {len(ACTIVATIONS)};" in source
