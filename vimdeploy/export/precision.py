"""Precision variants of an exported fp32 ONNX: `vimdeploy convert` (fp16: fp16.py; int8 and fp8:
int8.py's calibration and qdq.py's Q/DQ placement, optionally after smoothing.py).

TensorRT 11 is strongly typed: what precision each layer runs in is written in the ONNX
(fp16 tensors and Casts, QuantizeLinear/DequantizeLinear pairs), not chosen by builder
flags. So every precision variant is an ONNX file that ONNX Runtime runs and
`vimdeploy validate` checks before any engine exists. The variant is recorded in the
model's metadata (`vimdeploy.precision`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import onnx

from ..contract import PRECISIONS
from ..errors import InputError
from ..fileio import atomic_path, check_target, load_onnx
from .fp16 import to_fp16
from .int8 import default_cache_dir, read_calibration_images, to_quantized
from .smoothing import smooth as smooth_outliers

__all__ = ["PRECISIONS", "META_PRECISION", "KEEP_FLOAT", "convert_precision", "model_precision"]

META_PRECISION = "vimdeploy.precision"
# Layers without Q/DQ unless keep_float says otherwise (measured: benchmarks/results/accuracy.md).
KEEP_FLOAT = {"int8": ("out_proj",), "fp8": ()}


def _set_meta(model: onnx.ModelProto, entries: dict) -> None:
    props = {p.key: p.value for p in model.metadata_props}
    props.update({k: (v if isinstance(v, str) else json.dumps(v)) for k, v in entries.items()})
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)


def model_precision(model: onnx.ModelProto) -> str:
    return next((p.value for p in model.metadata_props if p.key == META_PRECISION), "fp32")


def convert_precision(
    source: str | Path,
    output: str | Path,
    precision: str,
    calib: str | Path | None = None,
    method: str = "max",
    percentile: float = 99.99,
    exclude: Iterable[str] = (),
    smooth: float | None = None,
    keep_float: Iterable[str] | None = None,
    keep_fp32: Iterable[str] = ("norm", "residual"),
    calib_limit: int | None = None,
    cache_dir: str | Path | None = "default",
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """fp32 ONNX (from `vimdeploy export`) -> fp16, int8 or fp8 ONNX, written atomically.

    int8/fp8: layers matching `exclude` or `keep_float` stay float. `keep_float` defaults to
    KEEP_FLOAT[precision]: out_proj for INT8, whose input (the scan's output) is heavy-tailed
    (amax ~30x its RMS), so that one per-tensor INT8 scale there costs the most of any layer
    (benchmarks/bench_accuracy.py's sensitivity table); FP8's exponent takes it. Pass () to
    quantize every GEMM. `smooth` (SmoothQuant's alpha, e.g. 0.5)
    first moves out_proj's activation outliers into its weights (smoothing.py)."""
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
    elif precision in ("int8", "fp8"):
        if calib is None:
            raise InputError(f"{precision.upper()} needs calibration images: pass --calib DIR (jpg/png files).")
        dims = model.graph.input[0].type.tensor_type.shape.dim
        size = (dims[2].dim_value, dims[3].dim_value)
        if not all(size):  # a dynamic-resolution export: calibrate at the trained resolution
            meta = {p.key: p.value for p in model.metadata_props}
            size = (int(meta.get("vimdeploy.trained_resolution", 224)),) * 2
        images = read_calibration_images(calib, size, calib_limit)
        keep_float = KEEP_FLOAT[precision] if keep_float is None else tuple(keep_float)
        if smooth:
            model, sinfo = smooth_outliers(model, images, alpha=smooth, targets=("out_proj",))
            info.update(sinfo)
        model, qinfo = to_quantized(
            model,
            images,
            precision,
            method=method,
            percentile=percentile,
            exclude=(*exclude, *keep_float),
            cache_dir=default_cache_dir() if cache_dir == "default" else cache_dir,
            progress=progress,
        )
        info.update(qinfo, kept_float=list(keep_float), calibration_dir=str(calib))
    _set_meta(model, {META_PRECISION: precision, "vimdeploy.precision_info": info})
    onnx.checker.check_model(model)
    with atomic_path(output, force=force) as tmp:
        onnx.save(model, tmp)
    return {"output": str(output), **info, "size_mb": output.stat().st_size / 1e6}
