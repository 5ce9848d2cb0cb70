"""The INT8 pass on an exported fp32 ONNX: QuantizeLinear/DequantizeLinear pairs from
calibration images.

Library, and why: ONNX Runtime's `quantize_static` in QDQ format (symmetric, zero point 0,
per-channel weights, per-tensor activations: what TensorRT consumes), with its calibrators
MinMax ("max"), Entropy and Percentile. It ships inside onnxruntime. Its calibration
sessions run the BiSelectiveScan nodes through vimdeploy's ONNX Runtime op (ort_op.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import onnx

from ..errors import InputError
from .ort_op import scan_errors, sessions_with_scan_op

__all__ = [
    "CALIB_METHODS",
    "to_int8",
    "read_calibration_images",
    "calibration_batches",
    "fixed_batch_size",
    "default_cache_dir",
]

CALIB_METHODS = ("max", "entropy", "percentile")


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


def default_cache_dir() -> Path:
    import os

    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vimdeploy" / "calibration"


def _range_cache_file(
    cache_dir: Path, model: onnx.ModelProto, images: np.ndarray, method: str, percentile: float
) -> Path:
    """Activation ranges depend on the graph, the images and the method: that is the key."""
    h = hashlib.sha256(model.SerializeToString())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(f"{method}:{percentile if method == 'percentile' else ''}".encode())
    return cache_dir / f"ranges-{h.hexdigest()[:20]}.json"


def to_int8(
    model: onnx.ModelProto,
    images: np.ndarray,
    method: str = "max",
    percentile: float = 99.99,
    exclude: Iterable[str] = (),
    batch: int = 8,
    cache_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[onnx.ModelProto, dict]:
    """INT8 Q/DQ for MatMul/Conv/Gemm (per-channel symmetric weights, per-tensor symmetric
    activations). `exclude`: module paths or parameter names whose layers stay in fp32,
    e.g. "x_proj", "dt_proj", "layers.0.", "head". With `cache_dir`, activation ranges are
    saved there (ONNX Runtime's calibration cache) and reused by any later conversion of the
    same graph with the same images and method. Returns (model, info)."""
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIB_METHODS:
        raise InputError(f"calibration method must be one of {', '.join(CALIB_METHODS)}; got {method!r}.")
    calib = {
        "max": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[method]
    excluded_nodes = [n.name for n in model.graph.node if _matches(n, exclude)]
    input_name = model.graph.input[0].name
    # QuantizeBias False: ONNX Runtime otherwise writes INT32 bias initializers behind a
    # DequantizeLinear, which TensorRT's IDequantizeLayer cannot take (INT8/FP8/INT4/FP4
    # only: onnx-tensorrt#850, onnxruntime#17738); the bias Add stays in float.
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "CalibPercentile": percentile, "QuantizeBias": False}
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
        with sessions_with_scan_op(), scan_errors(), quiet, _root_log_level(logging.ERROR):
            quantize_static(
                str(src),
                str(dst),
                _Batches(calibration_batches(images, batch, fixed_batch_size(model)), input_name, progress),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=["MatMul", "Conv", "Gemm"],
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=calib,
                nodes_to_exclude=excluded_nodes,
                extra_options=extra,
                **({"calibration_cache_path": str(cache)} if cache else {}),
            )
        quantized = onnx.load(dst)
    info["qdq_pairs"] = sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node)
    return quantized, info
