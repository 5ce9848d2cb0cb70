"""ONNX Runtime CPU implementations of `trt.plugins::BiSelectiveScan`: the session options
that know the op, and the casts that let the Python op run fp16 graphs. No PyTorch.

Two implementations, one chosen per session (`implementation`):

* "library": the native custom-op library (plugins/onnxruntime, `RegisterCustomOps` on ONNX
  Runtime's C API, the CPU kernel inside), registered with `register_custom_ops_library`
  where it is built (`vimdeploy.ops.native.ort_library_path`). It takes fp32 and fp16 nodes
  and reports a refused input as ONNX Runtime's error (`library_errors` makes that a
  ScanInputError).
* "python": a Python custom op of onnxruntime-extensions: ONNX Runtime calls back into Python
  with numpy arrays over its own buffers, and the callback hands their addresses to the native
  CPU kernel (vimdeploy/ops/native.py, the same library as the PyTorch "cpu" scan) through
  ctypes, no copy in the callback. Where the native kernel is not built, the callback falls
  back to the PyTorch scan where PyTorch is installed (and says so once).

Why a Python-op node cost ~14 ms more than its scan (benchmarks/bench_ort_op_overhead.py): not
the callback but onnxruntime-extensions' return path. Its Python side turns the op's result
into a Python list (`rv.flatten().tolist()`, onnxruntime_extensions/_ocos.py) that its C++
side turns back into an array (`numpy.ascontiguousarray`) before a memcpy: 75,648 Python
floats for one Vim-Ti layer at batch 1. `_ArrayResult` hands it the array itself where it
asks for the list, so only the memcpys remain (inputs are copied into numpy arrays, the
output out of one).

Limits of the Python op (FINDINGS): float32 only (the Python ops of onnxruntime-extensions do
not take float16; `with_fp32_scan_nodes` casts around the node to validate fp16 graphs), and
every declared attribute must be present on the node (the exporter always writes all four).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
import warnings

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..contract import (
    ACTIVATION_INDICES,
    D_STATE,
    DEFAULT_DELTA_SOFTPLUS,
    DEFAULT_OUT_SCALE,
    DOMAIN,
    NUM_INPUTS,
    OP_TYPE,
)
from ..errors import ArtifactError, InputError
from ..ops.check import ScanInputError, check_scan_inputs
from ..ops.inputs import ScanInputs
from ..ops.native import PluginError, load_cpu_library, ort_library_path
from ..ops.params import ScanParams

IMPLEMENTATIONS = ("auto", "library", "python")


def _threads() -> int:
    """Threads of the kernel inside ONNX Runtime: $VIMDEPLOY_CPU_THREADS, else every CPU the
    process may use (ONNX Runtime's own pool idles while the node runs)."""
    try:
        return max(0, int(os.environ.get("VIMDEPLOY_CPU_THREADS", "0")))
    except ValueError:
        return 0


def _native(arrays: list[np.ndarray], delta_softplus: bool, out_scale: float, threads: int | None = None) -> np.ndarray:
    """The native CPU kernel on arrays that `check_scan_inputs(native=True)` took."""
    arrays = [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]  # no copy for ORT's fp32 buffers
    sizes = {"b": arrays[1].shape[0], "L": arrays[1].shape[1], "E": arrays[1].shape[2]}
    lib = load_cpu_library()
    b, L, E = sizes["b"], sizes["L"], sizes["E"]
    y = np.empty((b, L, E), dtype=np.float32)
    p = ScanParams.from_pointers(
        ScanInputs(*(a.ctypes.data for a in arrays)),
        y.ctypes.data,
        b,
        L,
        E,
        D_STATE,
        "float32",
        delta_softplus,
        out_scale,
    )
    rc = lib.vimdeploy_bi_selective_scan_cpu(ctypes.byref(p), _threads() if threads is None else threads)
    if rc != 0:
        raise PluginError(f"vimdeploy_bi_selective_scan_cpu failed: {lib.vimdeploy_cpu_error_string(rc).decode()}")
    return y


def _torch(arrays: list[np.ndarray], delta_softplus: bool, out_scale: float, why: str) -> np.ndarray:
    try:
        import torch
    except ModuleNotFoundError:
        raise PluginError(f"{why}, and PyTorch (the fallback) is not installed") from None

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


def bi_selective_scan_numpy(
    arrays: list[np.ndarray], delta_softplus: bool = DEFAULT_DELTA_SOFTPLUS, out_scale: float = DEFAULT_OUT_SCALE
) -> np.ndarray:
    """The op on numpy arrays: the native CPU kernel where built, else the PyTorch scan where
    installed (else a PluginError); a ScanInputError (vimdeploy.ops.check) for inputs or
    attributes that break the contract."""
    arrays = [np.ascontiguousarray(a) for a in arrays]
    check_scan_inputs(arrays, delta_softplus, out_scale, native=True)
    try:
        return _native(arrays, delta_softplus, out_scale)
    except PluginError as e:
        y = _torch(arrays, delta_softplus, out_scale, str(e))
        _warn_once(str(e))
        return y


@functools.lru_cache(maxsize=1)
def _warn_once(message: str) -> None:
    warnings.warn(
        f"vimdeploy: {message}; ONNX Runtime's BiSelectiveScan runs the PyTorch scan (slower).",
        RuntimeWarning,
        stacklevel=3,
    )


_failures = threading.local()  # the op's exception in this thread's session.run (ONNX Runtime runs it there)


def _failed(error: Exception) -> np.ndarray:
    """Keep what the op raised for `scan_errors` and give ONNX Runtime an empty output. No
    exception may leave the callback: onnxruntime-extensions calls it from C++, where one
    ends the process (std::terminate, SIGABRT). The empty output cannot pass for the op's
    (b, L, E): the nodes that read it fail, or the model's outputs are empty."""
    if getattr(_failures, "error", None) is None:
        _failures.error = error
    return np.empty((0,), dtype=np.float32)


@contextlib.contextmanager
def scan_errors():
    """Around `session.run` of a session with the op: raise what the op refused (a
    ScanInputError for inputs that break the contract, a PluginError from the kernel) in place
    of ONNX Runtime's own error or of the outputs computed from the op's empty output."""
    _failures.error = None
    try:
        yield
    except Exception:
        error, _failures.error = getattr(_failures, "error", None), None
        if error is not None:
            raise error from None
        raise
    error, _failures.error = _failures.error, None
    if error is not None:
        raise error


@functools.cache
def custom_ops_library() -> str:
    """Define the Python op (once per process) and return the library path to register."""
    try:
        from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
    except ImportError:
        raise ArtifactError(
            f"running {OP_TYPE} nodes in ONNX Runtime needs onnxruntime-extensions, which is not "
            "installed: pip install onnxruntime-extensions"
        ) from None

    @onnx_op(
        op_type=f"{DOMAIN}::{OP_TYPE}",
        inputs=[PyCustomOpDef.dt_float] * NUM_INPUTS,
        outputs=[PyCustomOpDef.dt_float],
        attrs={
            "delta_softplus": PyCustomOpDef.dt_int64,
            "out_scale": PyCustomOpDef.dt_float,
            "plugin_version": PyCustomOpDef.dt_string,
            "plugin_namespace": PyCustomOpDef.dt_string,
        },
    )
    def bi_selective_scan(*inputs, **attrs):
        try:
            # the attributes as the node has them: the check refuses e.g. delta_softplus 2 or a NaN scale
            y = bi_selective_scan_numpy(list(inputs), attrs["delta_softplus"], attrs["out_scale"])
        except Exception as e:  # noqa: BLE001 - none may leave the callback, see _failed
            y = _failed(e)
        return y.view(_ArrayResult)

    return get_library_path()


def implementation(requested: str = "auto") -> tuple[str, str | None]:
    """("library", its path) or ("python", None): the native library where built (required for
    "library": PluginError where it is not), else the Python op."""
    if requested not in IMPLEMENTATIONS:
        raise InputError(f"unknown {OP_TYPE} implementation {requested!r}; known: {', '.join(IMPLEMENTATIONS)}")
    library = ort_library_path() if requested != "python" else None
    if library is not None:
        return "library", str(library)
    if requested == "library":
        raise PluginError(
            "the ONNX Runtime custom-op library is not built: reinstall vimdeploy with ONNXRUNTIME_INCLUDE_DIR "
            "set to the include/ of an ONNX Runtime release, or build plugins/onnxruntime with CMake "
            "(vimdeploy.ops.build.build_ort_library) and set VIMDEPLOY_ORT_LIBRARY"
        )
    return "python", None


def session_options(threads: int | None = None, library: str | None = None):
    """ORT SessionOptions with the BiSelectiveScan op: the native library at `library`, else
    the Python op."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if library is None:
        so.register_custom_ops_library(custom_ops_library())
    else:
        try:
            so.register_custom_ops_library(library)
        except Exception as e:  # noqa: BLE001 - ONNX Runtime's own error types
            raise PluginError(f"ONNX Runtime cannot load {library}: {str(e).splitlines()[0]}") from None
    if threads:
        so.intra_op_num_threads = threads
    return so


@contextlib.contextmanager
def library_errors():
    """Around `session.run` of a session with the native library: its refusal of the node's
    inputs (ONNX Runtime's error, holding the library's `trt.plugins::BiSelectiveScan: why`)
    raised as a ScanInputError with that reason."""
    marker = f"{DOMAIN}::{OP_TYPE}: "
    try:
        yield
    except Exception as e:
        if marker not in str(e):
            raise
        raise ScanInputError(str(e).split(marker, 1)[1].strip()) from None


@contextlib.contextmanager
def sessions_with_scan_op():
    """Let ONNX Runtime's calibrator open sessions that know BiSelectiveScan.

    The calibrator builds its own `onnxruntime.SessionOptions()` with no hook for custom
    op libraries; substitute a subclass that registers ours, for the duration only.
    """
    import onnxruntime as ort

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


# ---- fp16 graphs: the Python op takes fp32 only


def with_fp32_scan_nodes(model: onnx.ModelProto) -> bool:
    """Make fp16 BiSelectiveScan nodes runnable by the fp32-only Python op, in place.

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
        for i in ACTIVATION_INDICES:
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
