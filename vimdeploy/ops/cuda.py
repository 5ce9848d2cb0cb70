"""The CUDA kernel (plugins/, `vimdeploy plugin build`) as a PyTorch op:
`torch.ops.vimdeploy.bi_selective_scan_cuda`, scan backend "cuda".

It runs on the current CUDA stream, so CUDA graphs capture it; torch.compile sees one
opaque node (the fake implementation gives the output shape).
"""

from __future__ import annotations

import ctypes

import torch

from ..contract import D_STATE, DEFAULT_DELTA_SOFTPLUS, DEFAULT_OUT_SCALE
from .common import params, prepare
from .inputs import ScanInputs
from .library import call, define_scan_op
from .native import PluginError, load_library

__all__ = ["VARIANTS", "WARP_CHUNKS", "STATE_LANES", "bi_selective_scan_cuda", "launch"]

# launch()'s `variant` values besides 0 (automatic): the kernel variants of
# plugins/kernels/bi_selective_scan.cu (named VIMDEPLOY_SCAN_* in bi_selective_scan.h; docs/kernel.md lists them);
# WARP_CHUNKS is the sequence-parallel path that needs no workspace, STATE_LANES the kernel with
# a channel's 16 states on 16 lanes (no workspace, never splits L)
VARIANTS = range(1, 9)
WARP_CHUNKS = 7
STATE_LANES = 8


def launch(
    y: torch.Tensor,
    inputs: ScanInputs,
    *,
    delta_softplus: bool = DEFAULT_DELTA_SOFTPLUS,
    out_scale: float = DEFAULT_OUT_SCALE,
    num_chunks: int = 0,
    variant: int = 0,
) -> torch.Tensor:
    """Run the kernel into `y` (inputs already prepared: contiguous, one GPU, activations of
    y's dtype fp32/fp16, parameters fp32). num_chunks/variant: the C API's tuning knobs
    (variant 0 = automatic, else one of VARIANTS)."""
    lib = load_library()
    p = params(inputs, y, delta_softplus, out_scale)  # the contract's check first (ScanInputError)
    b, _, E = inputs.x_fwd.shape
    if variant in (WARP_CHUNKS, STATE_LANES):
        ws_bytes = 0
    elif num_chunks > 1:
        ws_bytes = 2 * b * num_chunks * (D_STATE + 1) * E * 4
    else:
        ws_bytes = lib.vimdeploy_bi_selective_scan_workspace_size(E, D_STATE) if num_chunks == 0 else 0
    dev = y.device
    ws = torch.empty(max(ws_bytes, 1), dtype=torch.uint8, device=dev)
    with torch.cuda.device(dev):
        stream = torch.cuda.current_stream(dev).cuda_stream
        rc = lib.vimdeploy_bi_selective_scan_ex(
            ctypes.byref(p), ws.data_ptr(), ws_bytes, stream, int(num_chunks), int(variant)
        )
    if rc != 0:
        raise PluginError(f"vimdeploy_bi_selective_scan failed: {lib.vimdeploy_error_string(rc).decode()} (code {rc})")
    return y


def _kernel(inputs, *, delta_softplus, out_scale):
    prepared, act = prepare(inputs, "cuda", strided_bc=True)
    y = torch.empty(prepared.x_fwd.shape, dtype=act, device=prepared.x_fwd.device)
    launch(y, prepared, delta_softplus=delta_softplus, out_scale=out_scale)
    return y.to(inputs.x_fwd.dtype)


# Registered for CPU tensors too, so that they get a PluginError that says why, not a dispatcher error.
_op = define_scan_op("bi_selective_scan_cuda", {"CUDA": _kernel, "CPU": _kernel})


def bi_selective_scan_cuda(
    inputs: ScanInputs, *, delta_softplus: bool = DEFAULT_DELTA_SOFTPLUS, out_scale: float = DEFAULT_OUT_SCALE
):
    """Scan backend "cuda": the CUDA kernel (PluginError if it is not built)."""
    return call(_op, inputs, delta_softplus, out_scale)
