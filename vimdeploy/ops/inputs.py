"""The inputs of the `BiSelectiveScan` op (export/op_contract.md), as PyTorch sees them.

`ScanInputs` is the contract's 15 inputs (`vimdeploy.contract.INPUT_NAMES`), in its order
and under its names. Every scan backend takes one
(`fn(inputs, *, delta_softplus=DEFAULT_DELTA_SOFTPLUS, out_scale=DEFAULT_OUT_SCALE) -> y`);
the model builds it, the exporter's op and the ONNX schema take their input names from the
contract, and the native libraries receive it as the C struct `VimdeployScanParams`, whose
input fields carry the same names (plugins/include/vimdeploy/scan_params.h).
"""

from __future__ import annotations

from collections import namedtuple

from ..contract import (
    ACTIVATIONS,
    D_STATE,
    DEFAULT_DELTA_SOFTPLUS,
    DEFAULT_OUT_SCALE,
    INPUT_NAMES,
    PARAMETERS,
    input_shapes,
)

__all__ = [
    "ScanInputs",
    "INPUT_NAMES",
    "ACTIVATIONS",
    "PARAMETERS",
    "D_STATE",
    "DEFAULT_DELTA_SOFTPLUS",
    "DEFAULT_OUT_SCALE",
    "op_schema",
]


class ScanInputs(namedtuple("ScanInputs", INPUT_NAMES)):
    """Activations (b, L, E) / (b, L, N) in one dtype, in token order (never flipped);
    parameters fp32: A (E, N) = -exp(A_log), D (E,), dt_bias (E,)."""

    __slots__ = ()

    def direction(self, name: str) -> tuple:
        """(x, dt, A, B, C, D, dt_bias) of the "fwd" or "bwd" direction."""
        return tuple(getattr(self, f"{k}_{name}") for k in ("x", "dt", "A", "B", "C", "D", "dt_bias"))

    def map(self, fn) -> ScanInputs:
        return ScanInputs(*(fn(t) for t in self))

    @staticmethod
    def shapes(b: int, L: int, E: int, N: int = D_STATE) -> ScanInputs:
        """The contract's shape of every input."""
        return ScanInputs(*input_shapes(b, L, E, N))


def op_schema() -> str:
    """The torch.library schema of a scan op: the 15 inputs, then the two attributes.
    The defaults must be the contract's: torch.export drops arguments equal to them."""
    tensors = ", ".join(f"Tensor {name}" for name in INPUT_NAMES)
    return f"({tensors}, bool delta_softplus={DEFAULT_DELTA_SOFTPLUS}, float out_scale={DEFAULT_OUT_SCALE!r}) -> Tensor"
