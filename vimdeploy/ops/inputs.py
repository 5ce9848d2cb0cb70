"""The inputs of the `BiSelectiveScan` op (export/op_contract.md), defined once.

`ScanInputs` is the contract's 15 inputs, in its order and under its names. Every scan
backend takes one (`fn(inputs, *, delta_softplus=True, out_scale=0.5) -> y`); the model
builds it, the exporter's op and the ONNX schema take their input names from it, and the
native libraries receive it as the C struct `VimdeployScanParams`, whose input fields
carry the same names (plugins/include/vimdeploy/scan_params.h).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["ScanInputs", "INPUT_NAMES", "ACTIVATIONS", "PARAMETERS", "D_STATE", "op_schema"]

D_STATE = 16  # what the native kernels support (Vim's d_state)


class ScanInputs(NamedTuple):
    """Activations (b, L, E) / (b, L, N) in one dtype, in token order (never flipped);
    parameters fp32: A (E, N) = -exp(A_log), D (E,), dt_bias (E,)."""

    z: torch.Tensor
    x_fwd: torch.Tensor
    dt_fwd: torch.Tensor
    B_fwd: torch.Tensor
    C_fwd: torch.Tensor
    x_bwd: torch.Tensor
    dt_bwd: torch.Tensor
    B_bwd: torch.Tensor
    C_bwd: torch.Tensor
    A_fwd: torch.Tensor
    A_bwd: torch.Tensor
    D_fwd: torch.Tensor
    D_bwd: torch.Tensor
    dt_bias_fwd: torch.Tensor
    dt_bias_bwd: torch.Tensor

    def direction(self, name: str) -> tuple[torch.Tensor, ...]:
        """(x, dt, A, B, C, D, dt_bias) of the "fwd" or "bwd" direction."""
        return tuple(getattr(self, f"{k}_{name}") for k in ("x", "dt", "A", "B", "C", "D", "dt_bias"))

    def map(self, fn) -> "ScanInputs":
        return ScanInputs(*(fn(t) for t in self))

    @staticmethod
    def shapes(b: int, L: int, E: int, N: int = D_STATE) -> "ScanInputs":
        """The contract's shape of every input."""
        act, bc = (b, L, E), (b, L, N)
        return ScanInputs(act, act, act, bc, bc, act, act, bc, bc, (E, N), (E, N), (E,), (E,), (E,), (E,))


INPUT_NAMES: tuple[str, ...] = ScanInputs._fields
ACTIVATIONS = INPUT_NAMES[:9]  # dtype T of the contract (fp32 or fp16)
PARAMETERS = INPUT_NAMES[9:]  # always fp32


def op_schema() -> str:
    """The torch.library schema of a scan op: the 15 inputs, then the two attributes.
    The defaults must be the contract's: torch.export drops arguments equal to them."""
    tensors = ", ".join(f"Tensor {name}" for name in INPUT_NAMES)
    return f"({tensors}, bool delta_softplus=True, float out_scale=0.5) -> Tensor"
