"""Hostile inputs of the BiSelectiveScan op, generated: every input too short and too long along
each dimension, of the wrong rank and of the wrong dtype; every attribute NaN, infinite or out of
range. Through each entry of the op (the PyTorch ops on CPU, the native CPU call, the ONNX
Runtime op, `vimdeploy inspect`'s TensorRT check, `vimdeploy infer` on an edited export) each
one must be a ScanInputError / one `error:` line: never a crash, never an output."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from vimdeploy.contract import (
    ACTIVATIONS,
    DIMS,
    DOMAIN,
    INPUT_NAMES,
    OP_TYPE,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    input_shapes,
)
from vimdeploy.ops import ScanInputs, get_scan, native
from vimdeploy.ops.check import ScanInputError

SIZES = {"b": 2, "L": 5, "E": 8, "N": 16}
GOOD = input_shapes(*SIZES.values())
needs_cpu_kernel = pytest.mark.skipif(not native.cpu_available(), reason="the native CPU scan is not built")
needs_ort_op = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime_extensions") is None,
    reason="onnxruntime-extensions (the Python ONNX Runtime op) is not installed",
)


def shape_cases():
    """(case id, index of the input, its hostile shape): each dimension one too short and three
    too long (a few steps past the end: what a kernel reading the others' sizes overruns), one
    dimension too many, one too few."""
    for i, (name, shape) in enumerate(zip(INPUT_NAMES, GOOD)):
        for d, dim in enumerate(DIMS[i]):
            for label, size in (("short", shape[d] - 1), ("long", shape[d] + 3)):
                yield f"{name}-{dim}-{label}", i, shape[:d] + (size,) + shape[d + 1 :]
        yield f"{name}-rank-up", i, shape + (1,)
        yield f"{name}-rank-down", i, shape[:-1]


SHAPE_CASES = list(shape_cases())
ATTRIBUTE_CASES = [
    ("softplus-2", 2, 0.5),
    ("softplus-minus-1", -1, 0.5),
    ("scale-nan", 1, math.nan),
    ("scale-inf", 1, math.inf),
    ("scale-minus-inf", 1, -math.inf),
]


def arrays(shapes=GOOD, seed=0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    for i in (INPUT_NAMES.index("A_fwd"), INPUT_NAMES.index("A_bwd")):
        out[i] = -np.abs(out[i]) - 0.1
    return out


def tensors(shapes=GOOD) -> ScanInputs:
    return ScanInputs(*(torch.from_numpy(a) for a in arrays(shapes)))


def with_shape(i, shape):
    shapes = list(GOOD)
    shapes[i] = shape
    return shapes


def test_the_corpus_covers_every_input_dimension_and_rank():
    assert len({i for _, i, _ in SHAPE_CASES}) == len(INPUT_NAMES)
    assert len(SHAPE_CASES) == sum(2 * len(dims) + 2 for dims in DIMS)


# ---- the PyTorch ops and the native CPU call ---------------------------------------------------


@pytest.mark.parametrize("scan", ["auto", "cpu"])
@pytest.mark.parametrize("case, i, shape", SHAPE_CASES, ids=[c for c, _, _ in SHAPE_CASES])
def test_torch_ops_refuse_inconsistent_shapes(scan, case, i, shape):
    if scan == "cpu" and not native.cpu_available():
        pytest.skip("the native CPU scan is not built")
    with pytest.raises(ScanInputError, match=INPUT_NAMES[i] if "rank" in case else None) as e:
        get_scan(scan)(tensors(with_shape(i, shape)))
    assert str(e.value).startswith(f"{OP_TYPE} inputs break the op contract")


@needs_cpu_kernel
@pytest.mark.parametrize("case, i, shape", SHAPE_CASES, ids=[c for c, _, _ in SHAPE_CASES])
def test_the_native_cpu_call_refuses_inconsistent_shapes(case, i, shape):
    from vimdeploy.ops.cpu import run

    with pytest.raises(ScanInputError):
        run(tensors(with_shape(i, shape)))


@pytest.mark.parametrize("name", INPUT_NAMES)
def test_torch_ops_refuse_a_wrong_dtype(name):
    inputs = tensors()
    bad = inputs._replace(**{name: getattr(inputs, name).to(torch.int32)})
    with pytest.raises(ScanInputError, match=name):
        get_scan("auto")(bad)


@needs_cpu_kernel
@pytest.mark.parametrize("name", INPUT_NAMES)
def test_the_native_cpu_call_refuses_a_wrong_dtype_or_layout(name):
    """What the kernel reads through pointers: fp32/fp16 activations, fp32 parameters, dense."""
    from vimdeploy.ops.common import params

    inputs = tensors()
    y = torch.empty(GOOD[1])
    wide = name in ACTIVATIONS and torch.float16 or torch.float64
    with pytest.raises(ScanInputError, match=name if wide is torch.float64 else "share one dtype"):
        params(inputs._replace(**{name: getattr(inputs, name).to(wide)}), y, True, 0.5)
    t = getattr(inputs, name)
    strided = torch.empty(*t.shape, 2)[..., 0].copy_(t)
    with pytest.raises(ScanInputError, match=f"{name} is not contiguous"):
        params(inputs._replace(**{name: strided}), y, True, 0.5)


@pytest.mark.parametrize("case, softplus, scale", ATTRIBUTE_CASES, ids=[c for c, _, _ in ATTRIBUTE_CASES])
@pytest.mark.parametrize("scan", ["auto", "cpu"])
def test_torch_ops_refuse_attributes_out_of_range(scan, case, softplus, scale):
    if scan == "cpu" and not native.cpu_available():
        pytest.skip("the native CPU scan is not built")
    with pytest.raises(ScanInputError, match="delta_softplus" if case.startswith("softplus") else "out_scale"):
        get_scan(scan)(tensors(), delta_softplus=softplus, out_scale=scale)
    if case.startswith("scale"):  # straight through the dispatcher, past `call`
        with pytest.raises(ScanInputError, match="out_scale"):
            torch.ops.vimdeploy.bi_selective_scan(*tensors(), out_scale=scale)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("case, i, shape", SHAPE_CASES, ids=[c for c, _, _ in SHAPE_CASES])
def test_the_cuda_op_refuses_inconsistent_shapes(case, i, shape):
    """The CUDA op (the native kernel where built, else the PyTorch scan on the GPU) checks the
    same contract before any pointer reaches a kernel; afterwards the GPU still works."""
    with pytest.raises(ScanInputError):
        get_scan("auto")(tensors(with_shape(i, shape)).map(torch.Tensor.cuda))
    torch.cuda.synchronize()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("case, softplus, scale", ATTRIBUTE_CASES, ids=[c for c, _, _ in ATTRIBUTE_CASES])
def test_the_cuda_op_refuses_attributes_out_of_range(case, softplus, scale):
    with pytest.raises(ScanInputError):
        get_scan("auto")(tensors().map(torch.Tensor.cuda), delta_softplus=softplus, out_scale=scale)
    torch.cuda.synchronize()


def test_consistent_inputs_still_run():
    y = get_scan("auto")(tensors())
    assert y.shape == GOOD[1] and torch.isfinite(y).all()


# ---- the ONNX Runtime op --------------------------------------------------------------------


def scan_model(shapes, dtype=TensorProto.FLOAT, **attrs) -> onnx.ModelProto:
    """One BiSelectiveScan node whose inputs are the graph's inputs, of the given shapes."""
    values = {
        "delta_softplus": 1,
        "out_scale": 0.5,
        "plugin_version": PLUGIN_VERSION,
        "plugin_namespace": PLUGIN_NAMESPACE,
        **attrs,
    }
    node = helper.make_node(OP_TYPE, list(INPUT_NAMES), ["y"], domain=DOMAIN, **values)
    ins = [helper.make_tensor_value_info(n, dtype, s) for n, s in zip(INPUT_NAMES, shapes)]
    graph = helper.make_graph([node], "scan", ins, [helper.make_tensor_value_info("y", dtype, None)])
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)], ir_version=10
    )


def run_scan_model(model, shapes):
    import onnxruntime as ort

    from vimdeploy.export.ort_op import scan_errors, session_options

    session = ort.InferenceSession(model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])
    with scan_errors():
        return session.run(None, dict(zip(INPUT_NAMES, arrays(shapes))))


@needs_ort_op
@pytest.mark.parametrize("case, i, shape", SHAPE_CASES, ids=[c for c, _, _ in SHAPE_CASES])
def test_the_onnxruntime_op_refuses_inconsistent_shapes(case, i, shape):
    shapes = with_shape(i, shape)
    with pytest.raises(ScanInputError, match=INPUT_NAMES[i] if "rank" in case else None):
        run_scan_model(scan_model(shapes), shapes)


@needs_ort_op
@pytest.mark.parametrize("case, softplus, scale", ATTRIBUTE_CASES, ids=[c for c, _, _ in ATTRIBUTE_CASES])
def test_the_onnxruntime_op_refuses_attributes_out_of_range(case, softplus, scale):
    with pytest.raises(ScanInputError, match="delta_softplus" if case.startswith("softplus") else "out_scale"):
        run_scan_model(scan_model(GOOD, delta_softplus=softplus, out_scale=scale), GOOD)


@pytest.mark.parametrize("name", INPUT_NAMES)
def test_the_numpy_op_refuses_a_wrong_dtype(name):
    from vimdeploy.export.ort_op import bi_selective_scan_numpy

    a = arrays()
    i = INPUT_NAMES.index(name)
    a[i] = a[i].astype(np.float64)
    with pytest.raises(ScanInputError, match=name if name not in ACTIVATIONS else "share one dtype"):
        bi_selective_scan_numpy(a)


@needs_ort_op
def test_an_fp64_node_is_refused_by_onnxruntime_when_the_session_opens():
    with pytest.raises(Exception, match="(?i)type"):
        run_scan_model(scan_model(GOOD, dtype=TensorProto.DOUBLE), GOOD)


@needs_ort_op
def test_the_onnxruntime_op_still_runs_consistent_inputs():
    (y,) = run_scan_model(scan_model(GOOD), GOOD)
    want = get_scan("reference")(tensors()).numpy()
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


# ---- a whole exported model: inspect and infer --------------------------------------------------


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """A one-block Vim (E = 128) exported with its BiSelectiveScan node."""
    from vimdeploy.export import export_onnx
    from vimdeploy.model import VimConfig, VisionMamba

    d = tmp_path_factory.mktemp("hostile")
    cfg = VimConfig(embed_dim=64, depth=1, patch_size=8, stride=8, img_size=32, num_classes=10)
    torch.save({"model": VisionMamba(cfg).init_weights("untrained").state_dict()}, d / "tiny.pth")
    export_onnx(d / "tiny.pth", d / "tiny.onnx", scan="plugin")
    np.save(d / "batch.npy", np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    return d


def hostile_copy(d, case: str, name: str | None = None, value=None, tile: str | None = None, **attrs):
    """The tiny export with the scan's input `name` replaced by the constant `value`, its input
    `tile` repeated 3 times along L by a Tile node, or its attributes set to `attrs`."""
    model = onnx.load(d / "tiny.onnx")
    (node,) = [n for n in model.graph.node if n.op_type == OP_TYPE]
    if tile is not None:
        i = INPUT_NAMES.index(tile)
        model.graph.initializer.append(numpy_helper.from_array(np.array([1, 3, 1], np.int64), "hostile_reps"))
        tiled = helper.make_node("Tile", [node.input[i], "hostile_reps"], [f"hostile_{tile}"])
        model.graph.node.insert(list(model.graph.node).index(node), tiled)
        node.input[i] = tiled.output[0]
    if name is not None:
        new = f"hostile_{name}"
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(value, np.float32), new))
        node.input[INPUT_NAMES.index(name)] = new
    for attr in node.attribute:
        if attr.name in attrs:
            attr.CopyFrom(helper.make_attribute(attr.name, attrs[attr.name]))
    path = d / f"{case}.onnx"
    onnx.save(model, path)
    return path


INFER_CASES = [  # D of length 1, A of 1x1 (a kernel that trusts x_fwd's sizes reads past their end); attributes
    ("D-of-one", {"name": "D_fwd", "value": np.ones(1)}),
    ("A-1x1", {"name": "A_bwd", "value": -np.ones((1, 1))}),
    ("x-tiled-along-L", {"tile": "x_fwd"}),
    ("softplus-2", {"delta_softplus": 2}),
    ("scale-nan", {"out_scale": math.nan}),
]


@pytest.mark.parametrize("case, edit", INFER_CASES, ids=[c for c, _ in INFER_CASES])
def test_inspect_calls_a_hostile_node_incompatible(tiny_export, case, edit):
    from vimdeploy.inspection import inspect_onnx

    assert inspect_onnx(tiny_export / "tiny.onnx")["tensorrt"]["compatible"]
    report = inspect_onnx(hostile_copy(tiny_export, case, **edit))["tensorrt"]
    assert not report["compatible"]
    wanted = edit.get("name") or edit.get("tile") or next(iter(edit))
    assert any(wanted in e for e in report["errors"]), report["errors"]


@needs_ort_op
@pytest.mark.parametrize("case, edit", INFER_CASES, ids=[c for c, _ in INFER_CASES])
def test_infer_on_a_hostile_export_is_one_error_line(tiny_export, case, edit):
    path = hostile_copy(tiny_export, case, **edit)
    out = tiny_export / f"{case}.npz"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "vimdeploy",
            "infer",
            str(path),
            "--input",
            str(tiny_export / "batch.npy"),
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in r.stderr.splitlines() + r.stdout.splitlines() if line.strip()]
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "BiSelectiveScan inputs break the op contract" in errors[0], lines
    assert not out.exists()
