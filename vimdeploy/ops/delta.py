"""The scan's step sizes as one op: `torch.ops.vimdeploy.delta_softplus`.

    delta = delta_softplus(dt, weight, bias)

dt (..., R) (a slice of x_proj's output rows is fine), weight (E, R) (dt_proj.weight), bias
(E,) or None -> delta (..., E) = softplus(dt @ weight.T + bias) in dt's dtype, softplus as
mamba_ssm (v > 20 -> v). The model hands delta to the BiSelectiveScan op with
delta_softplus=False and a zero dt_bias: the same scan, without the per-step softplus
(plugins/include/vimdeploy/delta_softplus.h).

On CUDA fp16 tensors it is one launch of the kernel in libvimdeploy_kernels.so (tensor-core
products, fp32 sums, softplus in fp32, rounded once), on the current stream; torch.compile sees
one opaque node. Elsewhere (CPU, fp32) it runs `delta_softplus_reference`.
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from ..contract import DTYPES
from . import native
from .library import _LIB, NAMESPACE
from .native import PluginError

__all__ = ["delta_softplus", "delta_softplus_reference", "delta_kernel_available", "DeltaParams", "MAX_R"]

MAX_R = 64  # VIMDEPLOY_DELTA_MAX_R


class DeltaParams(ctypes.Structure):
    """`VimdeployDeltaParams` (plugins/include/vimdeploy/delta_softplus.h)."""

    _fields_ = [(name, ctypes.c_void_p) for name in ("dt", "weight", "bias", "delta")] + [
        ("tokens", ctypes.c_int64),
        ("E", ctypes.c_int64),
        ("R", ctypes.c_int64),
        ("dt_stride", ctypes.c_int64),
        ("dtype", ctypes.c_int32),
    ]


def _entry():
    """vimdeploy_delta_softplus of the kernel library (PluginError if it is missing)."""
    return native.entry_point("vimdeploy_delta_softplus", [ctypes.POINTER(DeltaParams), ctypes.c_void_p])


@torch.compiler.assume_constant_result
def delta_kernel_available() -> bool:
    """The CUDA library with the delta kernel loads (checked once; a constant under torch.compile)."""
    return native.loads(_entry)


def delta_softplus_reference(dt, weight, bias):
    """The op in PyTorch: fp32 math (fp64 for fp64 dt), output in dt's dtype."""
    acc = torch.float64 if dt.dtype == torch.float64 else torch.float32
    v = F.linear(dt.to(acc), weight.to(acc), None if bias is None else bias.to(acc))
    return F.softplus(v).to(dt.dtype)  # threshold 20: mamba_ssm's rule


def _rows(dt: torch.Tensor) -> tuple[torch.Tensor, int]:
    """dt as (tokens, R) rows of unit stride with one row stride (a view where it can be)."""
    flat = dt.reshape(-1, dt.shape[-1]) if dt.dim() != 2 else dt
    if flat.stride(-1) != 1 or (flat.shape[0] > 1 and flat.stride(0) < flat.shape[1]):
        flat = flat.contiguous()
    return flat, flat.stride(0) if flat.shape[0] > 1 else flat.shape[1]


def _check(dt, weight, bias):
    if weight.dim() != 2 or weight.shape[1] != dt.shape[-1]:
        raise PluginError(f"delta_softplus: weight must be (E, {dt.shape[-1]}), got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise PluginError(f"delta_softplus: bias must be ({weight.shape[0]},), got {tuple(bias.shape)}")


def _cuda(dt, weight, bias):
    _check(dt, weight, bias)
    R, E = dt.shape[-1], weight.shape[0]
    if dt.dtype != torch.float16 or not 1 <= R <= MAX_R:
        return delta_softplus_reference(dt, weight, bias)
    rows, stride = _rows(dt)
    w = weight.to(torch.float16).contiguous()
    b = None if bias is None else bias.to(torch.float32).contiguous()
    out = torch.empty(*dt.shape[:-1], E, dtype=dt.dtype, device=dt.device)
    p = DeltaParams(
        rows.data_ptr(),
        w.data_ptr(),
        None if b is None else b.data_ptr(),
        out.data_ptr(),
        rows.shape[0],
        E,
        R,
        stride,
        DTYPES["float16"],
    )
    with torch.cuda.device(dt.device):
        rc = _entry()(ctypes.byref(p), torch.cuda.current_stream(dt.device).cuda_stream)
    native.check_call("vimdeploy_delta_softplus", rc)
    return out


def _cpu(dt, weight, bias):
    _check(dt, weight, bias)
    return delta_softplus_reference(dt, weight, bias)


_NAME = "delta_softplus"
_LIB.define(f"{_NAME}(Tensor dt, Tensor weight, Tensor? bias) -> Tensor")
_LIB.impl(_NAME, _cuda, "CUDA")
_LIB.impl(_NAME, _cpu, "CPU")


@torch.library.register_fake(f"{NAMESPACE}::{_NAME}", lib=_LIB)
def _fake(dt, weight, bias):
    return dt.new_empty(*dt.shape[:-1], weight.shape[0])


delta_softplus = getattr(getattr(torch.ops, NAMESPACE), _NAME)
