"""Precision passes on an exported fp32 ONNX: FP16 casts and INT8 Q/DQ.

TensorRT 11 is strongly typed: what precision each layer runs in is written in the ONNX
(fp16 tensors and Casts, QuantizeLinear/DequantizeLinear pairs), not chosen by builder
flags. So every precision variant is an ONNX file that ONNX Runtime runs and
`vimdeploy validate` checks before any engine exists.

Libraries, and why:
* FP16: `onnxconverter_common.float16.convert_float_to_float16` (Microsoft's converter,
  the one ONNX Runtime documents). It takes a node block list, which is how the parts
  that measurement says must stay fp32 are kept there. NVIDIA ModelOpt's AutoCast does the
  same with more automation, but `nvidia-modelopt[onnx]` pins onnx 1.21 and pulls
  onnxruntime-gpu and CuPy, which we cannot carry as a core dependency.
* INT8: ONNX Runtime's `quantize_static` in QDQ format (symmetric, zero point 0,
  per-channel weights, per-tensor activations: what TensorRT consumes), with its
  calibrators MinMax ("max"), Entropy and Percentile. It ships inside onnxruntime.

What stays fp32 and why (see docs/precision.md for the measurements):
* the scan's A, D and dt biases: fp32 by the op contract (`export/op_contract.md`);
* the BiSelectiveScan math and state: fp32 inside the op; in an FP16 model its
  activations are fp16 (the TensorRT plugin reads and writes fp16);
* the RMSNorms and the residual stream (`keep_fp32="norm,residual"`, the default): the
  residual grows through 24 blocks and its squares overflow fp16 (Vim training in AMP is
  known to overflow there: hustvl/Vim #30).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import logging
import json
import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import InputError, VimdeployError
from ..fileio import atomic_path, check_target, load_onnx, scratch_folder
from .op import OP_TYPE

__all__ = ["PRECISIONS", "CALIB_METHODS", "convert_precision", "to_fp16", "to_int8", "sensitive_nodes",
           "read_calibration_images"]

PRECISIONS = ("fp32", "fp16", "int8")
CALIB_METHODS = ("max", "entropy", "percentile")
SCAN_ACTIVATION_INPUTS = range(9)  # z, x/dt/B/C of both directions (op contract inputs 0..8)
META_PRECISION = "vimdeploy.precision"


# --------------------------------------------------------------------------------------------
# Finding the parts to keep in fp32

def _producers(graph) -> dict[str, onnx.NodeProto]:
    return {out: n for n in graph.node for out in n.output}


def _consumers(graph) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    return users


def sensitive_nodes(model: onnx.ModelProto, keep: Iterable[str] = ("norm", "residual")) -> list[str]:
    """Names of the nodes of the RMSNorms ("norm") and of the residual additions ("residual").

    An RMSNorm as exported is x -> Pow(2) -> ReduceMean -> Add(eps) -> Sqrt -> Reciprocal,
    then x * rstd * weight; the residual stream is the Add that produces its x.
    """
    keep = set(keep)
    unknown = keep - {"norm", "residual"}
    if unknown:
        raise InputError(f"--keep-fp32 takes 'norm' and/or 'residual'; got {', '.join(sorted(unknown))}.")
    g = model.graph
    prod, users = _producers(g), _consumers(g)
    names: list[str] = []
    for mean in (n for n in g.node if n.op_type == "ReduceMean"):
        pow_node = prod.get(mean.input[0])
        if pow_node is None or pow_node.op_type != "Pow":
            continue
        x = pow_node.input[0]
        if "norm" in keep:
            chain, node = [pow_node, mean], mean
            for op in ("Add", "Sqrt", "Reciprocal"):
                nxt = [u for u in users.get(node.output[0], []) if u.op_type == op]
                if not nxt:
                    break
                node = nxt[0]
                chain.append(node)
            scale = [u for u in users.get(node.output[0], []) if u.op_type == "Mul"]
            for mul in scale:
                chain.append(mul)
                chain += [u for u in users.get(mul.output[0], []) if u.op_type == "Mul"]  # * weight
            names += [n.name for n in chain]
        if "residual" in keep and x in prod and prod[x].op_type == "Add":
            names.append(prod[x].name)
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------------------------
# FP16

def _scan_nodes(graph):
    return [n for n in graph.node if n.op_type == OP_TYPE]


def _make_scan_activations_fp16(model: onnx.ModelProto) -> None:
    """Let each BiSelectiveScan read and write fp16 activations (A/D/bias stay fp32).

    The converter keeps a blocked node entirely fp32 by casting its inputs up and its
    output down; for the scan that doubles the memory traffic of the op for no accuracy
    (the op widens fp16 to fp32 on load itself). Remove those casts on inputs 0..8 and on
    the output.
    """
    g = model.graph
    prod, users = _producers(g), _consumers(g)
    dead = []
    for node in _scan_nodes(g):
        for i in SCAN_ACTIVATION_INPUTS:
            cast = prod.get(node.input[i])
            if cast is not None and cast.op_type == "Cast":
                node.input[i] = cast.input[0]
                if all(u is node for u in users.get(cast.output[0], [])):
                    dead.append(cast)
        down = users.get(node.output[0], [])
        if down and all(u.op_type == "Cast" and helper.get_attribute_value(u.attribute[0]) == TensorProto.FLOAT16
                        for u in down):
            for cast in down:
                for u in users.get(cast.output[0], []):
                    for k, name in enumerate(u.input):
                        if name == cast.output[0]:
                            u.input[k] = node.output[0]
                for k, o in enumerate(g.output):
                    if o.name == cast.output[0]:
                        raise VimdeployError("a scan output is a graph output; cannot retype it")  # never in Vim
                dead.append(cast)
    for cast in dead:
        if cast in g.node:
            g.node.remove(cast)
    # Drop stale value_info; shape inference below recomputes types.
    del g.value_info[:]


def _separate_consumed_outputs(model: onnx.ModelProto) -> None:
    """Give a graph output that other nodes also read (`features`, read by the head) its own
    Identity. With keep_io_types the converter retypes the producer but not the internal
    readers of an output name, which leaves the head with mixed fp32/fp16 inputs."""
    g = model.graph
    users = _consumers(g)
    for out in g.output:
        if users.get(out.name):
            inner = out.name + "_value"
            for n in g.node:
                n.output[:] = [inner if o == out.name else o for o in n.output]
                n.input[:] = [inner if i == out.name else i for i in n.input]
            g.node.append(helper.make_node("Identity", [inner], [out.name], name=out.name + "_output"))


def to_fp16(model: onnx.ModelProto, keep_fp32: Iterable[str] = ("norm", "residual")) -> onnx.ModelProto:
    from onnxconverter_common import float16

    model = onnx.ModelProto.FromString(model.SerializeToString())  # never edit the caller's
    _separate_consumed_outputs(model)
    blocked = sensitive_nodes(model, keep_fp32)
    op_block = list(float16.DEFAULT_OP_BLOCK_LIST) + [OP_TYPE]
    with warnings.catch_warnings():
        # "the float32 number 1e-08 will be truncated to 1e-07": tiny weights clamp to fp16's range.
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(
            model, keep_io_types=True, op_block_list=op_block, node_block_list=blocked,
        )
    _make_scan_activations_fp16(converted)
    return onnx.shape_inference.infer_shapes(converted, strict_mode=True)


# --------------------------------------------------------------------------------------------
# INT8

def read_calibration_images(folder: str | Path, img_size: int, limit: int | None = None) -> np.ndarray:
    """All jpg/png images of a folder (sorted, recursively), through the predict preprocessing."""
    from ..data import load_images

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"calibration folder {folder} does not exist.")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if limit:
        files = files[:limit]
    if not files:
        raise InputError(f"no .jpg/.jpeg/.png images in {folder}.")
    return load_images(files, img_size)


def _node_label(node: onnx.NodeProto) -> str:
    """What a node came from: its name plus the module path and parameter names that the
    torch exporter records in its metadata (MatMul weights lose their names in the graph)."""
    meta = {p.key: p.value for p in node.metadata_props}
    return " ".join([node.name, meta.get("namespace", ""), meta.get("pkg.torch.onnx.fx_node", "")])


def _matches(node: onnx.NodeProto, patterns: Iterable[str]) -> bool:
    """`x_proj`, `layers.0.` or `head` match a node by module path (dots) or parameter name (underscores)."""
    label = _node_label(node)
    return any(p and (p in label or p.replace(".", "_") in label) for p in patterns)


def calibration_batches(images: np.ndarray, batch: int, fixed_batch: int | None = None) -> list[np.ndarray]:
    """Split calibration images into the batches ONNX Runtime feeds the model.

    A dynamic-batch model takes chunks of `batch`. A fixed-batch model takes exactly
    `fixed_batch` images per run: the last chunk (or the only one, with fewer images than
    the batch) is filled by repeating images from the start, which moves no max range and
    weighs the histogram calibrators by at most `fixed_batch - 1` repeated images.
    """
    if fixed_batch:
        n = max(len(images), fixed_batch)
        return [np.take(images, np.arange(i, i + fixed_batch), axis=0, mode="wrap") for i in range(0, n, fixed_batch)]
    return [images[i : i + batch] for i in range(0, len(images), batch)]


def fixed_batch_size(model: onnx.ModelProto) -> int | None:
    """The batch of the model's image input when it is fixed (an int dimension), else None."""
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") and dim.dim_value > 0 else None


class _Batches:
    """onnxruntime.quantization.CalibrationDataReader over prepared batches, with progress."""

    def __init__(self, chunks: list[np.ndarray], input_name: str, progress):
        self.chunks = chunks
        self.input_name, self.progress, self.i = input_name, progress, 0

    def get_next(self):
        if self.i >= len(self.chunks):
            return None
        self.i += 1
        if self.progress:
            self.progress(self.i, len(self.chunks))
        return {self.input_name: self.chunks[self.i - 1]}

    def rewind(self):
        self.i = 0


@contextlib.contextmanager
def _root_log_level(level):
    root = logging.getLogger()
    before = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(before)


@contextlib.contextmanager
def _sessions_with_scan_op():
    """Let ONNX Runtime's calibrator open sessions that know BiSelectiveScan.

    The calibrator builds its own `onnxruntime.SessionOptions()` with no hook for custom
    op libraries; substitute a subclass that registers ours, for the duration only.
    """
    import onnxruntime as ort

    from .ort_op import custom_ops_library

    library = custom_ops_library()
    original = ort.SessionOptions

    class WithScanOp(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.register_custom_ops_library(library)

    ort.SessionOptions = WithScanOp
    try:
        yield
    finally:
        ort.SessionOptions = original


def default_cache_dir() -> Path:
    import os

    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vimdeploy" / "calibration"


def _range_cache_file(cache_dir: Path, model: onnx.ModelProto, images: np.ndarray, method: str,
                      percentile: float) -> Path:
    """Activation ranges depend on the graph, the images and the method: that is the key."""
    h = hashlib.sha256(model.SerializeToString())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(f"{method}:{percentile if method == 'percentile' else ''}".encode())
    return cache_dir / f"ranges-{h.hexdigest()[:20]}.json"


def to_int8(model: onnx.ModelProto, images: np.ndarray, method: str = "max", percentile: float = 99.99,
            exclude: Iterable[str] = (), batch: int = 8, cache_dir: str | Path | None = None,
            progress: Callable[[int, int], None] | None = None) -> tuple[onnx.ModelProto, dict]:
    """INT8 Q/DQ for MatMul/Conv/Gemm (per-channel symmetric weights, per-tensor symmetric
    activations). `exclude`: module paths or parameter names whose layers stay in fp32,
    e.g. "x_proj", "dt_proj", "layers.0.", "head". With `cache_dir`, activation ranges are
    saved there (ONNX Runtime's calibration cache) and reused by any later conversion of the
    same graph with the same images and method. Returns (model, info)."""
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIB_METHODS:
        raise InputError(f"calibration method must be one of {', '.join(CALIB_METHODS)}; got {method!r}.")
    calib = {"max": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}[method]
    excluded_nodes = [n.name for n in model.graph.node if _matches(n, exclude)]
    input_name = model.graph.input[0].name
    # QuantizeBias False: ONNX Runtime otherwise writes INT32 bias initializers behind a
    # DequantizeLinear, which TensorRT's IDequantizeLayer cannot take (INT8/FP8/INT4/FP4
    # only: onnx-tensorrt#850, onnxruntime#17738); the bias Add stays in float.
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "CalibPercentile": percentile,
             "QuantizeBias": False}
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, src)
        info = {"method": method, "images": int(len(images)), "excluded_nodes": excluded_nodes}
        cache = None
        # ONNX Runtime's calibration cache (`calibration_cache_path`) is recent (1.31 has it).
        if cache_dir is not None and "calibration_cache_path" in inspect.signature(quantize_static).parameters:
            cache = _range_cache_file(Path(cache_dir), model, images, method, percentile)
            cache.parent.mkdir(parents=True, exist_ok=True)
            info["calibration_cache"] = str(cache)
            info["calibration_cache_hit"] = cache.is_file()
        if method == "percentile":
            info["percentile"] = percentile
        # ORT's calibrators print progress to stdout and log advice at WARNING: keep stdout
        # clean for --json and let our own progress callback speak.
        quiet = contextlib.redirect_stdout(io.StringIO())
        with _sessions_with_scan_op(), quiet, _root_log_level(logging.ERROR):
            quantize_static(
                str(src), str(dst), _Batches(calibration_batches(images, batch, fixed_batch_size(model)), input_name, progress),
                quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul", "Conv", "Gemm"],
                per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                calibrate_method=calib, nodes_to_exclude=excluded_nodes, extra_options=extra,
                **({"calibration_cache_path": str(cache)} if cache else {}),
            )
        quantized = onnx.load(dst)
    info["qdq_pairs"] = sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node)
    return quantized, info


# --------------------------------------------------------------------------------------------
# The command

def _set_meta(model: onnx.ModelProto, entries: dict) -> None:
    props = {p.key: p.value for p in model.metadata_props}
    props.update({k: (v if isinstance(v, str) else json.dumps(v)) for k, v in entries.items()})
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)


def model_precision(model: onnx.ModelProto) -> str:
    return next((p.value for p in model.metadata_props if p.key == META_PRECISION), "fp32")


def convert_precision(source: str | Path, output: str | Path, precision: str, calib: str | Path | None = None,
                      method: str = "max", percentile: float = 99.99, exclude: Iterable[str] = (),
                      keep_fp32: Iterable[str] = ("norm", "residual"), calib_limit: int | None = None,
                      cache_dir: str | Path | None = "default", force: bool = False, progress: Callable[[int, int], None] | None = None) -> dict:
    """fp32 ONNX (from `vimdeploy export`) -> fp16 or int8 ONNX, written atomically."""
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}.")
    output = Path(output)
    check_target(output, force)
    model = load_onnx(source)
    if model_precision(model) != "fp32":
        raise InputError(f"{source} is already {model_precision(model)}; convert from the fp32 export.")
    info: dict = {"precision": precision}
    if precision == "fp16":
        keep = list(keep_fp32)
        model = to_fp16(model, keep)
        info["kept_fp32"] = keep
    elif precision == "int8":
        if calib is None:
            raise InputError("INT8 needs calibration images: pass --calib DIR (jpg/png files).")
        dims = model.graph.input[0].type.tensor_type.shape.dim
        size = (dims[2].dim_value, dims[3].dim_value)
        if not all(size):  # a dynamic-resolution export: calibrate at the trained resolution
            meta = {p.key: p.value for p in model.metadata_props}
            size = (int(meta.get("vimdeploy.trained_resolution", 224)),) * 2
        images = read_calibration_images(calib, size, calib_limit)
        model, qinfo = to_int8(model, images, method=method, percentile=percentile, exclude=exclude,
                               cache_dir=default_cache_dir() if cache_dir == "default" else cache_dir,
                               progress=progress)
        info.update(qinfo, calibration_dir=str(calib))
    _set_meta(model, {META_PRECISION: precision, "vimdeploy.precision_info": info})
    onnx.checker.check_model(model)
    with atomic_path(output, force=force) as tmp:
        onnx.save(model, tmp)
    return {"output": str(output), **info, "size_mb": output.stat().st_size / 1e6}


def with_fp32_scan_nodes(model: onnx.ModelProto) -> bool:
    """Make fp16 BiSelectiveScan nodes runnable by the fp32-only ONNX Runtime op, in place.

    Casts fp16 activations to fp32 before the node and its output back to fp16 after it.
    That is exact emulation of the fp16 plugin, which widens fp16 to fp32 on load, computes
    in fp32 and rounds the result to fp16 on store. Returns whether anything changed.
    """
    g = model.graph
    typed = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.value_info, *g.input, *g.output]}
    typed.update({t.name: t.data_type for t in g.initializer})
    nodes, changed = [], False
    for node in g.node:
        if node.op_type != OP_TYPE or typed.get(node.input[0]) != TensorProto.FLOAT16:
            nodes.append(node)
            continue
        changed = True
        for i in SCAN_ACTIVATION_INPUTS:
            wide = f"{node.name}_in{i}_fp32"
            nodes.append(helper.make_node("Cast", [node.input[i]], [wide], to=TensorProto.FLOAT))
            node.input[i] = wide
        out = node.output[0]
        node.output[0] = f"{node.name}_out_fp32"
        nodes += [node, helper.make_node("Cast", [node.output[0]], [out], to=TensorProto.FLOAT16)]
    if changed:
        del g.node[:]
        g.node.extend(nodes)
    return changed


def export_at_precision(checkpoint, output, precision: str = "fp32", force: bool = False, progress=None,
                        convert_options: dict | None = None, **export_options) -> dict:
    """`vimdeploy export --precision`: the fp32 export, then the precision pass, one output file."""
    from .exporter import export_onnx

    output = Path(output)
    if precision == "fp32":
        return export_onnx(checkpoint, output, force=force, progress=progress, **export_options)
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}.")
    check_target(output, force)
    with scratch_folder(output) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        summary = export_onnx(checkpoint, fp32, progress=progress, **export_options)
        if progress:
            progress(f"converting to {precision}")
        converted = convert_precision(fp32, output, precision, force=force, **(convert_options or {}))
    summary.update(output=str(output), size_mb=converted["size_mb"], precision_info=converted)
    return summary
