"""Calibration and the INT8 / FP8 pass on an exported fp32 ONNX: activation ranges from
calibration images, then QuantizeLinear/DequantizeLinear pairs (qdq.py places them).

Library, and why: ONNX Runtime's calibrators (MinMax = "max", Entropy, Percentile), which ship
inside onnxruntime; their sessions run the BiSelectiveScan nodes through vimdeploy's ONNX
Runtime op (ort_op.py). The Q/DQ graph is written by qdq.py rather than by ORT's
`quantize_static`, so that INT8 and FP8 share one placement and TensorRT's rules hold by
construction (symmetric, zero point 0, per-channel weights, per-tensor activations, no
quantized bias).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import onnx

from ..errors import InputError
from .ort_op import scan_errors, sessions_with_scan_op
from .qdq import FORMATS, GEMM_OPS, insert_qdq, quant_sites

__all__ = [
    "CALIB_METHODS",
    "calibrate",
    "to_quantized",
    "to_int8",
    "read_calibration_images",
    "matches_layer",
    "calibration_batches",
    "fixed_batch_size",
    "default_cache_dir",
]

CALIB_METHODS = ("max", "entropy", "percentile")
HISTOGRAM_BINS = 2048


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


def matches_layer(node: onnx.NodeProto, patterns: Iterable[str]) -> bool:
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
    h.update(f"{method}:{percentile if method == 'percentile' else ''}:{HISTOGRAM_BINS}".encode())
    return cache_dir / f"amax-{h.hexdigest()[:20]}.json"


def calibrate(
    model: onnx.ModelProto,
    images: np.ndarray,
    method: str = "max",
    percentile: float = 99.99,
    batch: int = 8,
    cache_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, float], dict]:
    """amax (the symmetric range) of every GEMM input, from ONNX Runtime's calibrator
    (MinMax = "max", Entropy, Percentile of |x|). With `cache_dir`, the ranges are saved
    there as JSON and reused by any later conversion of the same graph, images and method."""
    import tempfile

    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    if method not in CALIB_METHODS:
        raise InputError(f"calibration method must be one of {', '.join(CALIB_METHODS)}; got {method!r}.")
    info: dict = {"method": method, "images": int(len(images))}
    if method == "percentile":
        info["percentile"] = percentile
    cache = None
    if cache_dir is not None:
        cache = _range_cache_file(Path(cache_dir), model, images, method, percentile)
        info["calibration_cache"] = str(cache)
        info["calibration_cache_hit"] = cache.is_file()
        if cache.is_file():
            return json.loads(cache.read_text()), info
    tensors = sorted({s.tensor for s in quant_sites(model) if not s.weight})
    calib = {"max": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy}.get(
        method, CalibrationMethod.Percentile
    )
    chunks = calibration_batches(images, batch, fixed_batch_size(model))
    # ORT's calibrators print progress to stdout and log advice at WARNING: keep stdout
    # clean for --json and let our own progress callback speak.
    quiet = contextlib.redirect_stdout(io.StringIO())
    with tempfile.TemporaryDirectory() as tmp, sessions_with_scan_op(), scan_errors(), quiet:
        with _root_log_level(logging.ERROR):
            src = Path(tmp) / "fp32.onnx"
            onnx.save(model, src)
            calibrator = create_calibrator(
                src,
                list(GEMM_OPS),
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=calib,
                # 2048 histogram bins for entropy as for percentile (TensorRT's entropy calibrator
                # uses 2048 into 128): ORT's entropy default of 128 bins into 128 can only
                # pick the full range, i.e. max.
                extra_options={"symmetric": True, "percentile": percentile, "num_bins": HISTOGRAM_BINS},
            )
            calibrator.collect_data(_Batches(chunks, model.graph.input[0].name, progress))
            ranges = calibrator.compute_data()
    amax = {t: float(max(abs(float(np.max(v))) for v in ranges[t].range_value)) for t in tensors}
    if cache is not None:
        from ..fileio import write_text

        cache.parent.mkdir(parents=True, exist_ok=True)
        write_text(cache, json.dumps(amax, indent=0))
    return amax, info


def to_quantized(
    model: onnx.ModelProto,
    images: np.ndarray,
    precision: str = "int8",
    method: str = "max",
    percentile: float = 99.99,
    exclude: Iterable[str] = (),
    batch: int = 8,
    cache_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[onnx.ModelProto, dict]:
    """INT8 or FP8 Q/DQ on MatMul/Conv/Gemm inputs (qdq.py), activation ranges calibrated on
    `images`. `exclude`: module paths or parameter names whose layers stay float, e.g.
    "x_proj", "dt_proj", "layers.0.", "head", "conv1d". Returns (model, info)."""
    if precision not in FORMATS:
        raise InputError(f"Q/DQ precision must be one of {', '.join(FORMATS)}; got {precision!r}.")
    excluded_nodes = [n.name for n in model.graph.node if matches_layer(n, exclude)]
    amax, info = calibrate(model, images, method, percentile, batch, cache_dir, progress)
    sites = quant_sites(model, skip=excluded_nodes)
    quantized = insert_qdq(model, sites, amax, FORMATS[precision])
    info["excluded_nodes"] = excluded_nodes
    info["qdq_pairs"] = sum(n.op_type == "QuantizeLinear" for n in quantized.graph.node)
    return quantized, info


def to_int8(model: onnx.ModelProto, images: np.ndarray, **options) -> tuple[onnx.ModelProto, dict]:
    """`to_quantized` in INT8."""
    return to_quantized(model, images, "int8", **options)
