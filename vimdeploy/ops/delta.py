"""The scan's step sizes as one op: `torch.ops.vimdeploy.delta_softplus` (and its two-direction
form `torch.ops.vimdeploy.delta_softplus_bidir`).

    delta = delta_softplus(dt, weight, bias)
    delta = delta_softplus_bidir(dt_fwd, dt_bwd, weight_fwd, weight_bwd, bias_fwd, bias_bwd)

dt (..., R) (a slice of x_proj's output rows is fine), weight (E, R) (dt_proj.weight), bias
(E,) or None -> delta (..., E) = softplus(dt @ weight.T + bias) in dt's dtype, softplus as
mamba_ssm (v > 20 -> v). The model hands delta to the BiSelectiveScan op with
delta_softplus=False and a zero dt_bias: the same scan, without the per-step softplus
(plugins/include/vimdeploy/delta_softplus.h).

On CUDA fp16 tensors it is one launch of the kernel in libvimdeploy_kernels.so (tensor-core
products, fp32 sums, softplus in fp32, rounded once), on the current stream; torch.compile sees
one opaque node. Elsewhere (CPU, fp32) it runs `delta_softplus_reference`.

`delta_softplus_bidir` is both scan directions at once: dt and weight of the same shapes per
direction -> delta (2, ..., E), [0] forward and [1] backward (each contiguous), one launch of the
same kernel on CUDA fp16 (each direction bit-identical to `delta_softplus` on its inputs).
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from ..contract import DTYPES
from . import native
from .library import _LIB, NAMESPACE
from .native import PluginError

__all__ = [
    "delta_softplus",
    "delta_softplus_bidir",
    "delta_softplus_reference",
    "delta_kernel_available",
    "DeltaParams",
    "MAX_R",
]

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


def _entry_bidir():
    """vimdeploy_delta_softplus_bidir (takes an array of two DeltaParams)."""
    return native.entry_point("vimdeploy_delta_softplus_bidir", [ctypes.POINTER(DeltaParams), ctypes.c_void_p])


@torch.compiler.assume_constant_result
def delta_kernel_available() -> bool:
    """The CUDA library with the delta kernel loads (checked once; a constant under torch.compile)."""
    return native.loads(_entry) and native.loads(_entry_bidir)


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


def _check_pair(fwd, bwd):
    """Both directions' (dt, weight, bias) checked, and of one shape and dtype (one launch, one output)."""
    for args in (fwd, bwd):
        _check(*args)
    if fwd[0].shape != bwd[0].shape or fwd[1].shape != bwd[1].shape or fwd[0].dtype != bwd[0].dtype:
        raise PluginError(
            "delta_softplus_bidir: both directions need the same dt and weight shapes and dt dtype, got "
            f"{tuple(fwd[0].shape)}/{tuple(bwd[0].shape)}, {tuple(fwd[1].shape)}/{tuple(bwd[1].shape)}, "
            f"{fwd[0].dtype}/{bwd[0].dtype}"
        )


def _kernel_applies(dt) -> bool:
    return dt.dtype == torch.float16 and 1 <= dt.shape[-1] <= MAX_R


def _params(dt, weight, bias, out) -> tuple[DeltaParams, tuple]:
    """The kernel's parameters for dt -> out (E = out's last dim), and the tensors they point
    into (kept alive until the launch is enqueued)."""
    rows, stride = _rows(dt)
    w = weight.to(torch.float16).contiguous()
    b = None if bias is None else bias.to(torch.float32).contiguous()
    p = DeltaParams(
        rows.data_ptr(),
        w.data_ptr(),
        None if b is None else b.data_ptr(),
        out.data_ptr(),
        rows.shape[0],
        out.shape[-1],
        dt.shape[-1],
        stride,
        DTYPES["float16"],
    )
    return p, (rows, w, b)


def _launch(name, entry, params, device):
    with torch.cuda.device(device):
        rc = entry(params, torch.cuda.current_stream(device).cuda_stream)
    native.check_call(name, rc)


def _cuda(dt, weight, bias):
    _check(dt, weight, bias)
    if not _kernel_applies(dt):
        return delta_softplus_reference(dt, weight, bias)
    out = torch.empty(*dt.shape[:-1], weight.shape[0], dtype=dt.dtype, device=dt.device)
    p, _keep = _params(dt, weight, bias, out)
    _launch("vimdeploy_delta_softplus", _entry(), ctypes.byref(p), dt.device)
    return out


def _cpu(dt, weight, bias):
    _check(dt, weight, bias)
    return delta_softplus_reference(dt, weight, bias)


def _cuda_bidir(dt_fwd, dt_bwd, weight_fwd, weight_bwd, bias_fwd, bias_bwd):
    fwd, bwd = (dt_fwd, weight_fwd, bias_fwd), (dt_bwd, weight_bwd, bias_bwd)
    _check_pair(fwd, bwd)
    if not _kernel_applies(dt_fwd):
        return torch.stack([delta_softplus_reference(*fwd), delta_softplus_reference(*bwd)])
    out = torch.empty(2, *dt_fwd.shape[:-1], weight_fwd.shape[0], dtype=dt_fwd.dtype, device=dt_fwd.device)
    made = [_params(*args, o) for args, o in ((fwd, out[0]), (bwd, out[1]))]  # (params, tensors kept)
    pair = (DeltaParams * 2)(*(p for p, _ in made))
    _launch("vimdeploy_delta_softplus_bidir", _entry_bidir(), pair, dt_fwd.device)
    return out


def _cpu_bidir(dt_fwd, dt_bwd, weight_fwd, weight_bwd, bias_fwd, bias_bwd):
    fwd, bwd = (dt_fwd, weight_fwd, bias_fwd), (dt_bwd, weight_bwd, bias_bwd)
    _check_pair(fwd, bwd)
    return torch.stack([delta_softplus_reference(*fwd), delta_softplus_reference(*bwd)])


def _fake(dt, weight, bias):
    return dt.new_empty(*dt.shape[:-1], weight.shape[0])


def _fake_bidir(dt_fwd, dt_bwd, weight_fwd, weight_bwd, bias_fwd, bias_bwd):
    return dt_fwd.new_empty(2, *dt_fwd.shape[:-1], weight_fwd.shape[0])


def _op(name, schema, cuda, cpu, fake):
    """torch.ops.vimdeploy.<name>: its CUDA and CPU implementations and its fake (torch.compile)."""
    _LIB.define(name + schema)
    _LIB.impl(name, cuda, "CUDA")
    _LIB.impl(name, cpu, "CPU")
    torch.library.register_fake(f"{NAMESPACE}::{name}", lib=_LIB)(fake)
    return getattr(getattr(torch.ops, NAMESPACE), name)


delta_softplus = _op("delta_softplus", "(Tensor dt, Tensor weight, Tensor? bias) -> Tensor", _cuda, _cpu, _fake)
delta_softplus_bidir = _op(
    "delta_softplus_bidir",
    "(Tensor dt_fwd, Tensor dt_bwd, Tensor weight_fwd, Tensor weight_bwd, Tensor? bias_fwd, Tensor? bias_bwd)"
    " -> Tensor",
    _cuda_bidir,
    _cpu_bidir,
    _fake_bidir,
)
