"""`torch.ops.vimdeploy.bi_selective_scan`: THE op, scan backend "auto" (the default).

It runs the native kernel of the tensors' device where that library is built (CPU:
`ops/cpu.py`, CUDA: `ops/cuda.py`) and the PyTorch scan ("fast") otherwise, saying once
how to get the native one. It is also what the exporter traces: one call per layer
becomes one `trt.plugins::BiSelectiveScan` node (vimdeploy/export/op.py).
"""

from __future__ import annotations

import warnings

from ..contract import D_STATE, DEFAULT_DELTA_SOFTPLUS, DEFAULT_OUT_SCALE
from .inputs import ScanInputs
from .library import call, define_scan_op
from .native import cpu_available, cuda_available
from .reference import bi_selective_scan_fast

__all__ = ["bi_selective_scan"]

_warned: set[str] = set()


def _fallback(device: str, why: str, inputs, delta_softplus, out_scale):
    if device not in _warned:
        _warned.add(device)
        warnings.warn(f"vimdeploy: {why}; using the PyTorch scan (slower).", RuntimeWarning, stacklevel=3)
    return bi_selective_scan_fast(inputs, delta_softplus=delta_softplus, out_scale=out_scale)


def _native_shape(inputs: ScanInputs) -> bool:
    return inputs.A_fwd.shape[-1] == D_STATE  # the kernels' d_state; other sizes run in PyTorch


def _cpu(inputs, *, delta_softplus, out_scale):
    if not _native_shape(inputs):
        return bi_selective_scan_fast(inputs, delta_softplus=delta_softplus, out_scale=out_scale)
    if cpu_available():
        from .cpu import _kernel

        return _kernel(inputs, delta_softplus=delta_softplus, out_scale=out_scale)
    return _fallback(
        "cpu",
        "the native CPU scan is not built (install vimdeploy with a C++ compiler present: "
        "`pip install .` or `make setup`)",
        inputs,
        delta_softplus,
        out_scale,
    )


def _cuda(inputs, *, delta_softplus, out_scale):
    if not _native_shape(inputs):
        return bi_selective_scan_fast(inputs, delta_softplus=delta_softplus, out_scale=out_scale)
    if cuda_available():
        from .cuda import _kernel

        return _kernel(inputs, delta_softplus=delta_softplus, out_scale=out_scale)
    return _fallback(
        "cuda", "the CUDA scan kernel is not built (run `vimdeploy plugin build`)", inputs, delta_softplus, out_scale
    )


_op = define_scan_op("bi_selective_scan", {"CPU": _cpu, "CUDA": _cuda})


def resolve(device_type: str) -> str:
    """The backend "auto" runs on a device ("cpu" or "cuda"), for reports."""
    if device_type == "cuda":
        return "cuda" if cuda_available() else "fast"
    return "cpu" if cpu_available() else "fast"


def bi_selective_scan(
    inputs: ScanInputs, *, delta_softplus: bool = DEFAULT_DELTA_SOFTPLUS, out_scale: float = DEFAULT_OUT_SCALE
):
    """Scan backend "auto": the native kernel of the inputs' device where built, else "fast"."""
    return call(_op, inputs, delta_softplus, out_scale)
