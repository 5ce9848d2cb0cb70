"""`VimdeployScanParams` (plugins/include/vimdeploy/scan_params.h) as a ctypes struct.

One struct carries every pointer and size the native scans read: the contract's 15 inputs
by name, the output, the sizes and the attributes. The CPU and CUDA libraries both take it.
"""

from __future__ import annotations

import ctypes

from ..contract import DTYPES, INPUT_NAMES
from .inputs import ScanInputs

__all__ = ["ScanParams"]


class ScanParams(ctypes.Structure):
    """`VimdeployScanParams`: the contract's inputs by name, then y and the sizes."""

    _fields_ = [(name, ctypes.c_void_p) for name in INPUT_NAMES] + [
        ("y", ctypes.c_void_p),
        ("batch", ctypes.c_int64),
        ("L", ctypes.c_int64),
        ("E", ctypes.c_int64),
        ("N", ctypes.c_int64),
        ("dtype", ctypes.c_int32),
        ("delta_softplus", ctypes.c_int32),
        ("out_scale", ctypes.c_float),
        ("bc_stride", ctypes.c_int64),  # 0: dense B/C
    ]

    @classmethod
    def from_pointers(
        cls,
        pointers: ScanInputs,
        y: int,
        batch: int,
        L: int,
        E: int,
        N: int,
        dtype: str,
        delta_softplus: bool,
        out_scale: float,
        bc_stride: int = 0,
    ) -> ScanParams:
        """`pointers`: a ScanInputs of addresses (ints) of dense row-major buffers (B and C:
        `bc_stride` elements between tokens, 0 = dense; CUDA kernel only)."""
        return cls(
            *pointers, y, batch, L, E, N, DTYPES[dtype], int(bool(delta_softplus)), float(out_scale), int(bc_stride)
        )
