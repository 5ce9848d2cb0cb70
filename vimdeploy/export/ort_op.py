"""ONNX Runtime CPU implementation of `trt.plugins::BiSelectiveScan`.

A Python custom op of onnxruntime-extensions: ONNX Runtime calls back into Python with
numpy arrays over its own buffers, and the callback hands their addresses to the native
CPU kernel (vimdeploy/ops/native.py, the same library as the PyTorch "cpu" scan) through
ctypes: no PyTorch and no copy in the callback. Where the native kernel is not built, the
callback falls back to the PyTorch scan (and says so once).

Why a node cost ~14 ms more than its scan (benchmarks/bench_ort_op_overhead.py): not the
callback but onnxruntime-extensions' return path. Its Python side turns the op's result
into a Python list (`rv.flatten().tolist()`, onnxruntime_extensions/_ocos.py) that its C++
side turns back into an array (`numpy.ascontiguousarray`) before a memcpy: 75,648 Python
floats for one Vim-Ti layer at batch 1. `_ArrayResult` hands it the array itself where it
asks for the list, so only the memcpys remain (inputs are copied into numpy arrays, the
output out of one).

Limits (FINDINGS): float32 only (the Python ops of onnxruntime-extensions do not take
float16; cast around the node to validate fp16 graphs), and every declared attribute must
be present on the node (the exporter always writes all four). A native ONNX Runtime
custom-op library would remove the Python round trip; it needs ONNX Runtime's C API
header, which no package that can be installed here ships.
"""

from __future__ import annotations

import ctypes
import functools
import os
import warnings

import numpy as np

from ..ops import INPUT_NAMES, D_STATE, ScanInputs
from ..ops.native import PluginError, ScanParams, load_cpu_library
from .op import DOMAIN, OP_TYPE


def _threads() -> int:
    """Threads of the kernel inside ONNX Runtime: $VIMDEPLOY_CPU_THREADS, else every CPU the
    process may use (ONNX Runtime's own pool idles while the node runs)."""
    try:
        return max(0, int(os.environ.get("VIMDEPLOY_CPU_THREADS", "0")))
    except ValueError:
        return 0


def _native(arrays: list[np.ndarray], delta_softplus: bool, out_scale: float, threads: int | None = None) -> np.ndarray:
    lib = load_cpu_library()
    arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]  # no copy for ORT's fp32 buffers
    b, L, E = arrays[1].shape
    y = np.empty((b, L, E), dtype=np.float32)
    p = ScanParams.from_pointers(ScanInputs(*(a.ctypes.data for a in arrays)), y.ctypes.data, b, L, E, D_STATE,
                                 "float32", delta_softplus, out_scale)
    rc = lib.vimdeploy_bi_selective_scan_cpu(ctypes.byref(p), _threads() if threads is None else threads)
    if rc != 0:
        raise PluginError(f"vimdeploy_bi_selective_scan_cpu failed: {lib.vimdeploy_cpu_error_string(rc).decode()}")
    return y


def _torch(arrays: list[np.ndarray], delta_softplus: bool, out_scale: float) -> np.ndarray:
    import torch

    from ..ops.reference import bi_selective_scan_fast

    with torch.inference_mode():
        inputs = ScanInputs(*(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays))
        return bi_selective_scan_fast(inputs, delta_softplus=delta_softplus, out_scale=out_scale).numpy()


class _ArrayResult(np.ndarray):
    """An array whose `tolist()` is the flat array itself (see the module docstring): the
    C++ side of onnxruntime-extensions passes it to numpy.ascontiguousarray, which takes it
    without a copy. Still a plain ndarray for any caller that uses it as one."""

    def tolist(self):  # type: ignore[override]
        return self.view(np.ndarray).reshape(-1)


def bi_selective_scan_numpy(arrays: list[np.ndarray], delta_softplus: bool = True, out_scale: float = 0.5) -> np.ndarray:
    """The op on numpy arrays: the native CPU kernel where built, else the PyTorch scan."""
    try:
        return _native(arrays, delta_softplus, out_scale)
    except PluginError as e:
        _warn_once(str(e))
        return _torch(arrays, delta_softplus, out_scale)


@functools.lru_cache(maxsize=1)
def _warn_once(message: str) -> None:
    warnings.warn(f"vimdeploy: {message}; ONNX Runtime's BiSelectiveScan runs the PyTorch scan (slower).",
                  RuntimeWarning, stacklevel=3)


@functools.lru_cache(maxsize=None)
def custom_ops_library() -> str:
    """Define the Python op (once per process) and return the library path to register."""
    from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op

    @onnx_op(
        op_type=f"{DOMAIN}::{OP_TYPE}",
        inputs=[PyCustomOpDef.dt_float] * len(INPUT_NAMES),
        outputs=[PyCustomOpDef.dt_float],
        attrs={
            "delta_softplus": PyCustomOpDef.dt_int64,
            "out_scale": PyCustomOpDef.dt_float,
            "plugin_version": PyCustomOpDef.dt_string,
            "plugin_namespace": PyCustomOpDef.dt_string,
        },
    )
    def bi_selective_scan(*inputs, **attrs):
        y = bi_selective_scan_numpy(list(inputs), bool(attrs["delta_softplus"]), float(attrs["out_scale"]))
        return y.view(_ArrayResult)

    return get_library_path()


def session_options(threads: int | None = None):
    """ORT SessionOptions with the BiSelectiveScan op available."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.register_custom_ops_library(custom_ops_library())
    if threads:
        so.intra_op_num_threads = threads
    return so
