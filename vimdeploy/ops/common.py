"""Checks and conversions shared by the native backends (CPU and CUDA)."""

from __future__ import annotations

import torch

from .inputs import D_STATE, INPUT_NAMES, PARAMETERS, ScanInputs
from .native import PluginError, ScanParams

KERNEL_DTYPES = {torch.float32: "float32", torch.float16: "float16"}


def prepare(inputs: ScanInputs, device_type: str) -> tuple[ScanInputs, torch.dtype]:
    """Contiguous tensors of the kernels' dtypes (activations fp32/fp16, e.g. bf16 runs in
    fp32; parameters fp32) on one device; returns (inputs, activation dtype)."""
    x = inputs.x_fwd
    if x.device.type != device_type:
        raise PluginError(f"the {device_type} scan needs {device_type} tensors, got {x.device}")
    if x.dim() != 3 or inputs.A_fwd.dim() != 2 or inputs.A_fwd.shape[-1] != D_STATE:
        raise PluginError(f"expected x (b, L, E) and A (E, {D_STATE}); got x {tuple(x.shape)}, A {tuple(inputs.A_fwd.shape)}")
    act = x.dtype if x.dtype in KERNEL_DTYPES else torch.float32
    tensors = []
    for name, t, want in zip(INPUT_NAMES, inputs, ScanInputs.shapes(*x.shape)):
        t = t.to(torch.float32 if name in PARAMETERS else act).contiguous()
        if tuple(t.shape) != want or t.device != x.device:
            raise PluginError(f"{name}: expected shape {want} on {x.device}, got {tuple(t.shape)} on {t.device}")
        tensors.append(t)
    return ScanInputs(*tensors), act


def params(inputs: ScanInputs, y: torch.Tensor, delta_softplus: bool, out_scale: float) -> ScanParams:
    """The C struct for prepared `inputs` and an output `y` (the tensors must outlive the call)."""
    b, L, E = inputs.x_fwd.shape
    return ScanParams.from_pointers(ScanInputs(*(t.data_ptr() for t in inputs)), y.data_ptr(), b, L, E, D_STATE,
                                    KERNEL_DTYPES[y.dtype], delta_softplus, out_scale)
