"""The BiSelectiveScan TensorRT plugin (plugins/): one-node engines and the full model.

Needs TensorRT's Python package, a GPU, and the plugin built against a TensorRT SDK with
headers (pip wheels ship none): `vimdeploy.ops.build.build(tensorrt_root=...)`, or
$TENSORRT_ROOT set so the fixture builds it. Everything here skips with a reason otherwise.

Tolerances: the plugin runs the same kernel as the PyTorch op, so the one-node checks
reuse the fp32/fp16 bounds of test_plugin_cuda.check. The full model through TensorRT
(fp32, TF32 off) must match the golden logits within 1e-3 (TensorRT may reorder the
matmul reductions; wrong semantics move logits by 0.4, see ../shared/golden/README.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_plugin_cuda import check, make_inputs

pytestmark = [pytest.mark.cuda, pytest.mark.tensorrt]
REPO = Path(__file__).resolve().parents[1]
from vimdeploy.ops import INPUT_NAMES as NAMES  # noqa: E402


@pytest.fixture(scope="module")
def trt():
    from vimdeploy.tensorrt import TensorRTMissing, import_tensorrt

    try:  # not `import tensorrt`: tensorrt-stubs alone makes that import succeed
        tensorrt = import_tensorrt()
    except TensorRTMissing as e:
        pytest.skip(f"TensorRT's Python package is not importable ({str(e).splitlines()[-1].strip()})")
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU (torch.cuda.is_available() is false)")
    return tensorrt


@pytest.fixture(scope="module")
def plugin_paths(trt):
    from vimdeploy.ops import native as plugin
    from vimdeploy.ops.build import build

    paths = plugin.library_paths()
    if "trt_plugin" not in paths:
        root = os.environ.get("TENSORRT_ROOT")
        if not root:
            pytest.skip("TensorRT plugin not built and $TENSORRT_ROOT (SDK with include/) not set")
        major, minor = torch.cuda.get_device_capability()
        paths = build(cuda_archs=f"{major}{minor}", tensorrt_root=root)
    if "trt_plugin" not in paths:
        pytest.skip("the build found no TensorRT headers")
    import ctypes

    ctypes.CDLL(str(paths["trt_plugin"]))  # static registration with getPluginRegistry()
    return paths


def _logger(trt):
    return trt.Logger(trt.Logger.WARNING)


def _network(trt, builder):
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):  # ignored (always on) in TensorRT 11
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return builder.create_network(flags)


def _config(trt, builder):
    config = builder.create_builder_config()
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    return config


def _run(trt, engine_bytes, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run an engine on torch CUDA tensors; every output starts as NaN (unwritten shows)."""
    runtime = trt.Runtime(_logger(trt))
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    assert engine is not None
    ctx = engine.create_execution_context()
    for name, t in feeds.items():
        ctx.set_input_shape(name, tuple(t.shape))
        ctx.set_tensor_address(name, t.data_ptr())
    outs = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        if engine.get_tensor_mode(name) != trt.TensorIOMode.OUTPUT:
            continue
        dtype = torch.from_numpy(np.empty(0, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
        outs[name] = torch.full(tuple(ctx.get_tensor_shape(name)), float("nan"), dtype=dtype, device="cuda")
        ctx.set_tensor_address(name, outs[name].data_ptr())
    stream = torch.cuda.current_stream()
    assert ctx.execute_async_v3(stream.cuda_stream)
    stream.synchronize()
    return outs


_TRT_DTYPE = {torch.float32: "float32", torch.float16: "float16"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_one_node_network(trt, plugin_paths, dtype):
    """Network API: add_plugin_v3 with the registered creator; dynamic batch and L."""
    b, L, E = 2, 197, 384
    args = make_inputs(b, L, E, dtype, seed=21)
    creator = trt.get_plugin_registry().get_creator("BiSelectiveScan", "1", "")
    assert creator is not None, "creator not registered"
    fc = trt.PluginFieldCollection(
        [
            trt.PluginField("delta_softplus", np.array([1], np.int32), trt.PluginFieldType.INT32),
            trt.PluginField("out_scale", np.array([0.5], np.float32), trt.PluginFieldType.FLOAT32),
        ]
    )
    plugin = creator.create_plugin("scan", fc, trt.TensorRTPhase.BUILD)
    builder = trt.Builder(_logger(trt))
    network = _network(trt, builder)
    profile = builder.create_optimization_profile()
    inputs = []
    for name, t in zip(NAMES, args):
        tdt = getattr(trt, _TRT_DTYPE[t.dtype])
        if t.dim() == 3:
            shape = (-1, -1, t.shape[2])
            profile.set_shape(name, (1, 1, t.shape[2]), tuple(t.shape), (4, 1024, t.shape[2]))
        else:
            shape = tuple(t.shape)
        inputs.append(network.add_input(name, tdt, shape))
    layer = network.add_plugin_v3(inputs, [], plugin)
    layer.get_output(0).name = "y"
    network.mark_output(layer.get_output(0))
    config = _config(trt, builder)
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    assert engine is not None, "engine build failed"
    out = _run(trt, engine, dict(zip(NAMES, args)))["y"]
    check(out, args, True, 0.5, what="TensorRT network API")


def _one_node_onnx(args, out_scale=0.5):
    from onnx import TensorProto, helper

    ttype = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16}
    ins = []
    for name, t in zip(NAMES, args):
        shape = ["batch", "L", t.shape[2]] if t.dim() == 3 else list(t.shape)
        ins.append(helper.make_tensor_value_info(name, ttype[t.dtype], shape))
    out = helper.make_tensor_value_info("y", ttype[args[1].dtype], ["batch", "L", args[1].shape[2]])
    node = helper.make_node(
        "BiSelectiveScan",
        list(NAMES),
        ["y"],
        domain="trt.plugins",
        delta_softplus=1,
        out_scale=float(out_scale),
        plugin_version="1",
        plugin_namespace="",
    )
    graph = helper.make_graph([node], "bi_scan", ins, [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("trt.plugins", 1)])
    model.ir_version = 8
    return model.SerializeToString()


def _build_from_onnx(trt, onnx_bytes, shapes: dict[str, tuple]):
    builder = trt.Builder(_logger(trt))
    network = _network(trt, builder)
    parser = trt.OnnxParser(network, _logger(trt))
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        pytest.fail(f"ONNX parser: {errors}")
    config = _config(trt, builder)
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        if any(d == -1 for d in t.shape):
            s = shapes[t.name]
            profile.set_shape(t.name, s, s, s)
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    assert engine is not None, "engine build failed"
    return engine


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_one_node_onnx_parser(trt, plugin_paths, dtype):
    """The exporter's node form (domain trt.plugins, plugin_version/namespace attributes)."""
    b, L, E = 3, 300, 192
    args = make_inputs(b, L, E, dtype, seed=22)
    engine = _build_from_onnx(trt, _one_node_onnx(args), {n: tuple(t.shape) for n, t in zip(NAMES, args)})
    out = _run(trt, engine, dict(zip(NAMES, args)))["y"]
    check(out, args, True, 0.5, what="TensorRT ONNX parser")


def test_dynamic_library_loads_with_load_library(trt, plugin_paths):
    """libvimdeploy_trt_plugin_dynamic.so through IPluginRegistry.load_library, in a fresh
    process (load_library fails where the static library already registered the creator)."""
    lib = plugin_paths.get("trt_plugin_dynamic")
    if lib is None:
        pytest.skip("dynamic plugin library not built")
    code = (
        "import tensorrt as trt, sys\n"
        "reg = trt.get_plugin_registry()\n"
        f"h = reg.load_library({str(lib)!r})\n"
        "assert h is not None, 'load_library failed'\n"
        "c = reg.get_creator('BiSelectiveScan', '1', '')\n"
        "assert c is not None and c.name == 'BiSelectiveScan'\n"
        "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_full_model_through_onnx_parser(trt, plugin_paths, tmp_path):
    """Vim-Ti golden: `vimdeploy.export.export_onnx(scan="plugin")` (one BiSelectiveScan
    node per layer) -> TensorRT's ONNX parser -> engine (fp32, TF32 off) -> golden logits."""
    export = pytest.importorskip("vimdeploy.export")
    from tests.test_plugin_cuda import _golden_dir

    d = _golden_dir()
    if d is None:
        pytest.skip("golden fixture not found: set VIMDEPLOY_GOLDEN or put shared/golden beside the repo")
    import onnx

    expected = np.load(d / "vim_t_p16_seed30.expected.npz")
    onnx_path = tmp_path / "vim_t_plugin.onnx"
    export.export_onnx(d / "vim_t_p16_seed30.pth", onnx_path, batch=2, scan="plugin")
    m = onnx.load(str(onnx_path))
    assert sum(n.op_type == "BiSelectiveScan" for n in m.graph.node) == 24  # Vim-Ti depth
    x = torch.from_numpy(expected["input"]).cuda()
    engine = _build_from_onnx(trt, m.SerializeToString(), {export.INPUT_NAME: tuple(x.shape)})
    outs = _run(trt, engine, {export.INPUT_NAME: x})
    err = np.abs(outs["logits"].float().cpu().numpy() - expected["logits"]).max()
    ferr = np.abs(outs["features"].float().cpu().numpy() - expected["features"]).max()
    assert err <= 1e-3, f"max |logits - golden| = {err:.3e}"
    assert ferr <= 1e-2, f"max |features - golden| = {ferr:.3e}"
