"""The mixer front's two depthwise convs + SiLU as one op: `torch.ops.vimdeploy.conv_silu_bidir`.

    y_fwd, y_bwd = conv_silu_bidir(x, weight_fwd, bias_fwd, weight_bwd, bias_bwd)

x (b, L, E); weights as Conv1d stores them (E, 1, k); biases (E,) or None. y_fwd is the causal
depthwise conv of the forward branch, y_bwd the anti-causal one of the backward branch (the
same-index kernel: y_bwd[t] = b + sum_j w[j] x[t + k-1 - j]), each through SiLU; see
`depthwise_conv_tokens` below for the PyTorch form and plugins/include/vimdeploy/conv_silu.h
for the kernel's contract.

On CUDA tensors of fp16 / fp32 it is one launch of the kernel in libvimdeploy_kernels.so
(`vimdeploy plugin build`), on the current stream (CUDA graphs capture it); torch.compile sees
one opaque node (the fake implementation gives the shapes). Elsewhere (CPU, other dtypes) it
runs `conv_silu_bidir_reference`. Sums in fp32, outputs rounded once to x's dtype.

    y_fwd, y_bwd, out_fwd, out_bwd = conv_silu_xproj_bidir(x, weight_fwd, bias_fwd, weight_bwd, bias_bwd,
                                                           xproj_fwd, xproj_bwd)

is the same with each direction's x_proj behind it: out_fwd = y_fwd @ xproj_fwd.T (xproj_* an
nn.Linear weight (rows, E)), in one launch of the kernel in conv_xproj.cu where it applies (fp16,
k = 4, E a multiple of 64, rows a multiple of 8 up to 80, 16-byte aligned tensors): the product
reads the conv outputs while they are in shared memory instead of once more from global memory.
Elsewhere the conv op and F.linear, apart (same values up to the GEMM's summation order).
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
    "conv_silu_bidir",
    "conv_silu_bidir_reference",
    "launch",
    "fused_conv_available",
    "ConvSiluParams",
    "VARIANTS",
    "MAX_K",
    "conv_silu_xproj_bidir",
    "conv_silu_xproj_bidir_reference",
    "fused_xproj_available",
    "xproj_kernel_applies",
    "XProjParams",
    "XPROJ_MAX_ROWS",
]

MAX_K = 8  # VIMDEPLOY_CONV_SILU_MAX_K
XPROJ_MAX_ROWS = 80  # VIMDEPLOY_CONV_XPROJ_MAX_ROWS
VARIANTS = {
    "auto": 0,
    "tiled8": 1,
    "tiled32": 2,
    "generic": 3,
    "scalar": 4,
    "async32": 5,
    "async16": 6,
}  # VIMDEPLOY_CONV_SILU_*
_KERNEL_DTYPES = (torch.float32, torch.float16)


class ConvSiluParams(ctypes.Structure):
    """`VimdeployConvSiluParams` (plugins/include/vimdeploy/conv_silu.h)."""

    _fields_ = [
        (name, ctypes.c_void_p) for name in ("x", "weight_fwd", "bias_fwd", "weight_bwd", "bias_bwd", "y_fwd", "y_bwd")
    ] + [
        ("batch", ctypes.c_int64),
        ("L", ctypes.c_int64),
        ("E", ctypes.c_int64),
        ("k", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
    ]


class XProjParams(ctypes.Structure):
    """`VimdeployXProjParams` (plugins/include/vimdeploy/conv_silu.h)."""

    _fields_ = [(name, ctypes.c_void_p) for name in ("weight_fwd", "weight_bwd", "out_fwd", "out_bwd")] + [
        ("rows", ctypes.c_int64)
    ]


def _entry():
    """vimdeploy_conv_silu_bidir_ex of the kernel library (PluginError if it is missing)."""
    return native.entry_point(
        "vimdeploy_conv_silu_bidir_ex", [ctypes.POINTER(ConvSiluParams), ctypes.c_void_p, ctypes.c_int]
    )


@torch.compiler.assume_constant_result
def fused_conv_available() -> bool:
    """The CUDA library with the conv kernel loads (checked once; a constant under torch.compile,
    so the model's choice of path costs no graph break)."""
    return native.loads(_entry)


def _xproj_entry():
    """vimdeploy_conv_silu_xproj_bidir of the kernel library (PluginError if it is missing)."""
    return native.entry_point(
        "vimdeploy_conv_silu_xproj_bidir",
        [ctypes.POINTER(ConvSiluParams), ctypes.POINTER(XProjParams), ctypes.c_void_p],
    )


@torch.compiler.assume_constant_result
def fused_xproj_available() -> bool:
    """The CUDA library with the conv + x_proj kernel loads (as `fused_conv_available`)."""
    return native.loads(_xproj_entry)


def xproj_kernel_applies(x: torch.Tensor, k: int, rows: int) -> bool:
    """The shapes and dtype that conv_xproj.cu takes (x (b, L, E) on a GPU, conv width k, x_proj
    rows): where False, `conv_silu_xproj_bidir` runs the conv op and F.linear apart."""
    return (
        x.is_cuda
        and x.dtype == torch.float16
        and k == 4
        and x.shape[-1] % 64 == 0
        and rows % 8 == 0
        and 0 < rows <= XPROJ_MAX_ROWS
    )


def _as_taps(w: torch.Tensor, E: int) -> torch.Tensor:
    """A Conv1d depthwise weight (E, 1, k) or (E, k) as contiguous fp32 (E, k)."""
    if w.dim() == 3 and w.shape[1] == 1:
        w = w[:, 0]
    if w.dim() != 2 or w.shape[0] != E or not 1 <= w.shape[1] <= MAX_K:
        raise PluginError(f"conv weight: expected ({E}, 1, k) with 1 <= k <= {MAX_K}, got {tuple(w.shape)}")
    return w.to(torch.float32).contiguous()


def launch(
    x: torch.Tensor,
    weight_fwd: torch.Tensor,
    bias_fwd: torch.Tensor | None,
    weight_bwd: torch.Tensor,
    bias_bwd: torch.Tensor | None,
    y_fwd: torch.Tensor,
    y_bwd: torch.Tensor,
    variant: str = "auto",
) -> None:
    """Run the kernel into y_fwd / y_bwd. x, y: contiguous (b, L, E) fp16/fp32 on one GPU;
    weights contiguous fp32 (E, k), biases contiguous fp32 (E,) or None. `variant`: a key of
    VARIANTS (tests and benchmarks force each kernel)."""
    fn = _entry()
    p = _params(x, weight_fwd, bias_fwd, weight_bwd, bias_bwd, y_fwd, y_bwd)
    with torch.cuda.device(x.device):
        stream = torch.cuda.current_stream(x.device).cuda_stream
        rc = fn(ctypes.byref(p), stream, VARIANTS[variant])
    native.check_call("vimdeploy_conv_silu_bidir", rc)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _params(x, weight_fwd, bias_fwd, weight_bwd, bias_bwd, y_fwd, y_bwd) -> ConvSiluParams:
    """`VimdeployConvSiluParams` of tensors as `launch` takes them."""
    b, L, E = x.shape
    return ConvSiluParams(
        _ptr(x),
        _ptr(weight_fwd),
        _ptr(bias_fwd),
        _ptr(weight_bwd),
        _ptr(bias_bwd),
        _ptr(y_fwd),
        _ptr(y_bwd),
        b,
        L,
        E,
        weight_fwd.shape[-1],
        DTYPES[str(x.dtype).removeprefix("torch.")],
    )


def depthwise_conv_tokens(x, weight, bias, anti_causal: bool):
    """Depthwise conv over the token axis of x (B, L, E) with weight (E, 1, k), causal or
    anti-causal (the same-index kernel flipped, ahead: what the official backward branch
    computes on its flipped sequence), in x's dtype.

    Written as the 2-D convolution (kernel 1 x k) of x viewed as a channels-last image
    (B, 1, L, E) -> (B, E, 1, L), which is what PyTorch runs for a 1-D one anyway. The export
    then holds a 2-D Conv between NHWC-shaped transposes, a form ONNX Runtime's CPU provider
    runs in its blocked (NCHWc) depthwise kernel with the output transpose folded into its
    reorder: both convs + SiLU of a Vim-Ti layer 0.36 -> 0.20 ms (2-core AMD EPYC, onnxruntime
    1.31.1), against a 1-D Conv between two transposes (docs/cpu.md).
    """
    k = weight.shape[-1]
    image = x.unsqueeze(1).permute(0, 3, 1, 2)  # (B, E, 1, L)
    w = weight.to(x.dtype).reshape(x.shape[-1], 1, 1, k)
    b = None if bias is None else bias.to(x.dtype)
    if anti_causal:
        out = F.conv2d(F.pad(image, (0, k - 1)), w.flip(-1), b, groups=x.shape[-1])
    else:
        out = F.conv2d(F.pad(image, (k - 1, 0)), w, b, groups=x.shape[-1])
    return out.permute(0, 2, 3, 1).squeeze(1)


def conv_silu_bidir_reference(x, weight_fwd, bias_fwd, weight_bwd, bias_bwd):
    """The op in PyTorch (the model's depthwise conv in fp32, or fp64 for fp64 x), outputs in x's dtype."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    xa = x.to(acc)
    return tuple(
        F.silu(depthwise_conv_tokens(xa, w, bias, anti_causal)).to(x.dtype).contiguous()
        for w, bias, anti_causal in ((weight_fwd, bias_fwd, False), (weight_bwd, bias_bwd, True))
    )


def conv_silu_xproj_bidir_reference(x, weight_fwd, bias_fwd, weight_bwd, bias_bwd, xproj_fwd, xproj_bwd):
    """The conv + x_proj op in PyTorch: the conv reference, then x_proj of its outputs as rounded
    to x's dtype, summed in fp32 (fp64 for fp64 x), rounded once."""
    y_fwd, y_bwd = conv_silu_bidir_reference(x, weight_fwd, bias_fwd, weight_bwd, bias_bwd)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    outs = [F.linear(y.to(acc), w.to(acc)).to(x.dtype) for y, w in ((y_fwd, xproj_fwd), (y_bwd, xproj_bwd))]
    return y_fwd, y_bwd, outs[0], outs[1]


def _check(x, weight_fwd, weight_bwd):
    if x.dim() != 3:
        raise PluginError(f"conv_silu_bidir: expected x (b, L, E), got {tuple(x.shape)}")
    if weight_fwd.shape != weight_bwd.shape:
        raise PluginError(
            f"conv_silu_bidir: weights differ in shape: {tuple(weight_fwd.shape)} vs {tuple(weight_bwd.shape)}"
        )


def _kernel_operands(x, weight_fwd, bias_fwd, weight_bwd, bias_bwd):
    """x contiguous, the taps (E, k) and biases (E,) as contiguous fp32: what the kernels read."""
    E = x.shape[-1]
    wf, wb = _as_taps(weight_fwd, E), _as_taps(weight_bwd, E)
    bf = None if bias_fwd is None else bias_fwd.to(torch.float32).contiguous()
    bb = None if bias_bwd is None else bias_bwd.to(torch.float32).contiguous()
    for name, bias in (("bias_fwd", bf), ("bias_bwd", bb)):
        if bias is not None and tuple(bias.shape) != (E,):
            raise PluginError(f"conv_silu_bidir: {name}: expected ({E},), got {tuple(bias.shape)}")
    return x.contiguous(), wf, bf, wb, bb


def _cuda(x, weight_fwd, bias_fwd, weight_bwd, bias_bwd):
    _check(x, weight_fwd, weight_bwd)
    if x.dtype not in _KERNEL_DTYPES:
        return conv_silu_bidir_reference(x, weight_fwd, bias_fwd, weight_bwd, bias_bwd)
    x, wf, bf, wb, bb = _kernel_operands(x, weight_fwd, bias_fwd, weight_bwd, bias_bwd)
    y_fwd, y_bwd = torch.empty_like(x), torch.empty_like(x)
    launch(x, wf, bf, wb, bb, y_fwd, y_bwd)
    return y_fwd, y_bwd


def _cpu(x, weight_fwd, bias_fwd, weight_bwd, bias_bwd):
    _check(x, weight_fwd, weight_bwd)
    return conv_silu_bidir_reference(x, weight_fwd, bias_fwd, weight_bwd, bias_bwd)


_NAME = "conv_silu_bidir"
_LIB.define(
    f"{_NAME}(Tensor x, Tensor weight_fwd, Tensor? bias_fwd, Tensor weight_bwd, Tensor? bias_bwd) -> (Tensor, Tensor)"
)
_LIB.impl(_NAME, _cuda, "CUDA")
_LIB.impl(_NAME, _cpu, "CPU")


@torch.library.register_fake(f"{NAMESPACE}::{_NAME}", lib=_LIB)
def _fake(x, weight_fwd, bias_fwd, weight_bwd, bias_bwd):
    return (
        torch.empty_like(x, memory_format=torch.contiguous_format),
        torch.empty_like(x, memory_format=torch.contiguous_format),
    )


conv_silu_bidir = getattr(getattr(torch.ops, NAMESPACE), _NAME)


def _check_xproj(x, xproj_fwd, xproj_bwd):
    if xproj_fwd.dim() != 2 or xproj_fwd.shape != xproj_bwd.shape or xproj_fwd.shape[1] != x.shape[-1]:
        raise PluginError(
            f"conv_silu_xproj_bidir: expected x_proj weights (rows, {x.shape[-1]}) of one shape, got "
            f"{tuple(xproj_fwd.shape)} and {tuple(xproj_bwd.shape)}"
        )


def _xproj_cuda(x, weight_fwd, bias_fwd, weight_bwd, bias_bwd, xproj_fwd, xproj_bwd):
    _check(x, weight_fwd, weight_bwd)
    _check_xproj(x, xproj_fwd, xproj_bwd)
    rows = xproj_fwd.shape[0]
    if not (xproj_kernel_applies(x, weight_fwd.shape[-1], rows) and fused_xproj_available()):
        y_fwd, y_bwd = conv_silu_bidir(x, weight_fwd, bias_fwd, weight_bwd, bias_bwd)
        return y_fwd, y_bwd, F.linear(y_fwd, xproj_fwd.to(x.dtype)), F.linear(y_bwd, xproj_bwd.to(x.dtype))
    x, wf, bf, wb, bb = _kernel_operands(x, weight_fwd, bias_fwd, weight_bwd, bias_bwd)
    pf, pb = (w.to(torch.float16).contiguous() for w in (xproj_fwd, xproj_bwd))
    y_fwd, y_bwd = torch.empty_like(x), torch.empty_like(x)
    out_fwd, out_bwd = (x.new_empty(*x.shape[:-1], rows) for _ in range(2))
    p = _params(x, wf, bf, wb, bb, y_fwd, y_bwd)
    xp = XProjParams(_ptr(pf), _ptr(pb), _ptr(out_fwd), _ptr(out_bwd), rows)
    with torch.cuda.device(x.device):
        rc = _xproj_entry()(ctypes.byref(p), ctypes.byref(xp), torch.cuda.current_stream(x.device).cuda_stream)
    native.check_call("vimdeploy_conv_silu_xproj_bidir", rc)
    return y_fwd, y_bwd, out_fwd, out_bwd


def _xproj_cpu(x, weight_fwd, bias_fwd, weight_bwd, bias_bwd, xproj_fwd, xproj_bwd):
    _check(x, weight_fwd, weight_bwd)
    _check_xproj(x, xproj_fwd, xproj_bwd)
    return conv_silu_xproj_bidir_reference(x, weight_fwd, bias_fwd, weight_bwd, bias_bwd, xproj_fwd, xproj_bwd)


_XPROJ = "conv_silu_xproj_bidir"
_LIB.define(
    f"{_XPROJ}(Tensor x, Tensor weight_fwd, Tensor? bias_fwd, Tensor weight_bwd, Tensor? bias_bwd, "
    "Tensor xproj_fwd, Tensor xproj_bwd) -> (Tensor, Tensor, Tensor, Tensor)"
)
_LIB.impl(_XPROJ, _xproj_cuda, "CUDA")
_LIB.impl(_XPROJ, _xproj_cpu, "CPU")


@torch.library.register_fake(f"{NAMESPACE}::{_XPROJ}", lib=_LIB)
def _xproj_fake(x, weight_fwd, bias_fwd, weight_bwd, bias_bwd, xproj_fwd, xproj_bwd):
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    out = x.new_empty(*x.shape[:-1], xproj_fwd.shape[0])
    return y, torch.empty_like(y), out, torch.empty_like(out)


conv_silu_xproj_bidir = getattr(getattr(torch.ops, NAMESPACE), _XPROJ)
