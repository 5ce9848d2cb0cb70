"""Conversions shared by the native backends (CPU and CUDA), and their C struct."""

from __future__ import annotations

import torch

from ..contract import D_STATE, INPUT_NAMES, PARAMETERS
from .check import ScanInputError, check_scan_inputs
from .inputs import ScanInputs
from .native import PluginError
from .params import ScanParams

KERNEL_DTYPES = {torch.float32: "float32", torch.float16: "float16"}


BC_NAMES = ("B_fwd", "C_fwd", "B_bwd", "C_bwd")


def bc_row_stride(inputs: ScanInputs, act: torch.dtype) -> int:
    """The common token stride of B and C when all four are (b, L, N) views with unit stride over
    N and batch stride L * that (e.g. slices of x_proj's output) in the activation dtype: the
    CUDA kernel reads them in place (`bc_stride`); 0 when they need a dense copy."""
    if inputs.x_fwd.dim() != 3:
        return 0
    b, L, _ = inputs.x_fwd.shape
    strides = set()
    for name in BC_NAMES:
        t = getattr(inputs, name)
        if (
            t.dtype != act
            or t.dim() != 3
            or t.shape[-1] != D_STATE
            or t.stride(-1) != 1
            or t.device != inputs.x_fwd.device
        ):
            return 0
        s = t.stride(1)
        if s < D_STATE or (b > 1 and t.stride(0) != L * s):
            return 0
        strides.add(s)
    return strides.pop() if len(strides) == 1 else 0


def prepare(inputs: ScanInputs, device_type: str, strided_bc: bool = False) -> tuple[ScanInputs, torch.dtype]:
    """Contiguous tensors of the kernels' dtypes (activations fp32/fp16, e.g. bf16 runs in
    fp32; parameters fp32); returns (inputs, activation dtype). `strided_bc`: B and C stay as
    they are where `bc_row_stride` allows (CUDA kernel). Shapes, devices and the result are
    checked against the contract by `params`, before the kernel gets a pointer."""
    x = inputs.x_fwd
    if x.device.type != device_type:
        raise PluginError(f"the {device_type} scan needs {device_type} tensors, got {x.device}")
    act = x.dtype if x.dtype in KERNEL_DTYPES else torch.float32
    keep_bc = strided_bc and bc_row_stride(inputs, act) > 0
    tensors = []
    for name, t in zip(INPUT_NAMES, inputs):
        if not (keep_bc and name in BC_NAMES):
            t = t.to(torch.float32 if name in PARAMETERS else act).contiguous()
        tensors.append(t)
    return ScanInputs(*tensors), act


def params(inputs: ScanInputs, y: torch.Tensor, delta_softplus: bool, out_scale: float) -> ScanParams:
    """The C struct for prepared `inputs` and an output `y` (the tensors must outlive the call),
    after the contract's check of what the kernel will read and write (ScanInputError)."""
    strided = y.is_cuda and not inputs.B_fwd.is_contiguous()  # bc_stride: the CUDA kernel's
    if strided and bc_row_stride(inputs, y.dtype) == 0:
        raise ScanInputError("B and C are neither contiguous nor token-strided views the CUDA kernel reads in place")
    sizes = check_scan_inputs(inputs, delta_softplus, out_scale, native=True, strided=BC_NAMES if strided else ())
    b, L, E = sizes["b"], sizes["L"], sizes["E"]
    if (
        tuple(y.shape) != (b, L, E)
        or y.dtype != inputs.x_fwd.dtype
        or y.device != inputs.x_fwd.device
        or not y.is_contiguous()
    ):
        raise ScanInputError(
            f"output y must be a contiguous ({b}, {L}, {E}) {inputs.x_fwd.dtype} tensor on "
            f"{inputs.x_fwd.device}, got {tuple(y.shape)} {y.dtype} on {y.device}"
        )
    stride = inputs.B_fwd.stride(1) if strided else 0
    return ScanParams.from_pointers(
        ScanInputs(*(t.data_ptr() for t in inputs)),
        y.data_ptr(),
        b,
        L,
        E,
        D_STATE,
        KERNEL_DTYPES[y.dtype],
        delta_softplus,
        out_scale,
        stride,
    )
