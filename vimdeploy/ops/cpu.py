"""The native CPU kernel as a PyTorch op: `torch.ops.vimdeploy.bi_selective_scan_cpu`.

Scan backend "cpu". It runs on PyTorch's intra-op thread count (torch.get_num_threads())
with the library's own pool; see plugins/cpu/bi_selective_scan_cpu.cpp.
"""

from __future__ import annotations

import ctypes

import torch

from ..contract import DEFAULT_DELTA_SOFTPLUS, DEFAULT_OUT_SCALE
from .common import params, prepare
from .inputs import ScanInputs
from .library import call, define_scan_op
from .native import PluginError, load_cpu_library

__all__ = ["bi_selective_scan_cpu", "run"]


def run(
    inputs: ScanInputs,
    *,
    delta_softplus: bool = DEFAULT_DELTA_SOFTPLUS,
    out_scale: float = DEFAULT_OUT_SCALE,
    threads: int | None = None,
) -> torch.Tensor:
    """The op on CPU tensors with the native kernel (no torch op dispatch)."""
    lib = load_cpu_library()
    inputs, act = prepare(inputs, "cpu")
    y = torch.empty(inputs.x_fwd.shape, dtype=act)
    p = params(inputs, y, delta_softplus, out_scale)
    rc = lib.vimdeploy_bi_selective_scan_cpu(ctypes.byref(p), int(threads or torch.get_num_threads()))
    if rc != 0:
        raise PluginError(f"vimdeploy_bi_selective_scan_cpu failed: {lib.vimdeploy_cpu_error_string(rc).decode()}")
    return y


def _kernel(inputs, *, delta_softplus, out_scale):
    y = run(inputs, delta_softplus=delta_softplus, out_scale=out_scale)
    return y.to(inputs.x_fwd.dtype)


# Registered for CUDA tensors too, so that they get a PluginError that says why, not a dispatcher error.
_op = define_scan_op("bi_selective_scan_cpu", {"CPU": _kernel, "CUDA": _kernel})


def bi_selective_scan_cpu(
    inputs: ScanInputs, *, delta_softplus: bool = DEFAULT_DELTA_SOFTPLUS, out_scale: float = DEFAULT_OUT_SCALE
):
    """Scan backend "cpu": the native CPU kernel (PluginError if it is not built)."""
    return call(_op, inputs, delta_softplus, out_scale)
