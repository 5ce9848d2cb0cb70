"""Checks and conversions shared by the native backends (CPU and CUDA)."""

from __future__ import annotations

import torch

from .inputs import D_STATE, INPUT_NAMES, PARAMETERS, ScanInputs
from .native import PluginError, ScanParams

KERNEL_DTYPES = {torch.float32: "float32", torch.float16: "float16"}


BC_NAMES = ("B_fwd", "C_fwd", "B_bwd", "C_bwd")


def bc_row_stride(inputs: ScanInputs, act: torch.dtype) -> int:
    """The common token stride of B and C when all four are (b, L, N) views with unit stride over
    N and batch stride L * that (e.g. slices of x_proj's output) in the activation dtype: the
    CUDA kernel reads them in place (`bc_stride`); 0 when they need a dense copy."""
    b, L, _ = inputs.x_fwd.shape
    strides = set()
    for name in BC_NAMES:
        t = getattr(inputs, name)
        if t.dtype != act or t.dim() != 3 or t.shape[-1] != D_STATE or t.stride(-1) != 1 or t.device != inputs.x_fwd.device:
            return 0
        s = t.stride(1)
        if s < D_STATE or (b > 1 and t.stride(0) != L * s):
            return 0
        strides.add(s)
    return strides.pop() if len(strides) == 1 else 0


def prepare(inputs: ScanInputs, device_type: str, strided_bc: bool = False) -> tuple[ScanInputs, torch.dtype]:
    """Contiguous tensors of the kernels' dtypes (activations fp32/fp16, e.g. bf16 runs in
    fp32; parameters fp32) on one device; returns (inputs, activation dtype). `strided_bc`:
    B and C stay as they are where `bc_row_stride` allows (CUDA kernel)."""
    x = inputs.x_fwd
    if x.device.type != device_type:
        raise PluginError(f"the {device_type} scan needs {device_type} tensors, got {x.device}")
    if x.dim() != 3 or inputs.A_fwd.dim() != 2 or inputs.A_fwd.shape[-1] != D_STATE:
        raise PluginError(f"expected x (b, L, E) and A (E, {D_STATE}); got x {tuple(x.shape)}, A {tuple(inputs.A_fwd.shape)}")
    act = x.dtype if x.dtype in KERNEL_DTYPES else torch.float32
    keep_bc = strided_bc and bc_row_stride(inputs, act) > 0
    tensors = []
    for name, t, want in zip(INPUT_NAMES, inputs, ScanInputs.shapes(*x.shape)):
        if not (keep_bc and name in BC_NAMES):
            t = t.to(torch.float32 if name in PARAMETERS else act).contiguous()
        if tuple(t.shape) != want or t.device != x.device:
            raise PluginError(f"{name}: expected shape {want} on {x.device}, got {tuple(t.shape)} on {t.device}")
        tensors.append(t)
    return ScanInputs(*tensors), act


def params(inputs: ScanInputs, y: torch.Tensor, delta_softplus: bool, out_scale: float) -> ScanParams:
    """The C struct for prepared `inputs` and an output `y` (the tensors must outlive the call)."""
    b, L, E = inputs.x_fwd.shape
    stride = inputs.B_fwd.stride(1) if not inputs.B_fwd.is_contiguous() else 0
    return ScanParams.from_pointers(ScanInputs(*(t.data_ptr() for t in inputs)), y.data_ptr(), b, L, E, D_STATE,
                                    KERNEL_DTYPES[y.dtype], delta_softplus, out_scale, stride)
