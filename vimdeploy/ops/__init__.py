"""The bidirectional selective scan of Vim (export/op_contract.md) behind one interface.

Every backend is `fn(inputs: ScanInputs, *, delta_softplus=True, out_scale=0.5) -> y` (the
contract's defaults, `vimdeploy.contract`) and
is named in `SCANS`, imported only when asked for (`get_scan(name)`):

| name | what |
| --- | --- |
| auto | `torch.ops.vimdeploy.bi_selective_scan`: the native kernel of the tensors' device where built, |
|      | else fast (default) |
| reference | the sequential loop, the ground truth (ops/reference.py) |
| fast | chunked associative scan in PyTorch (ops/reference.py) |
| cpu | the native CPU kernel (ops/cpu.py) |
| cuda | the CUDA kernel of plugins/ (ops/cuda.py) |
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ..contract import ACTIVATIONS, D_STATE, INPUT_NAMES, PARAMETERS
from .inputs import ScanInputs

__all__ = ["ScanInputs", "INPUT_NAMES", "ACTIVATIONS", "PARAMETERS", "D_STATE", "SCANS", "get_scan", "ScanFn"]

ScanFn = Callable[..., "object"]

SCANS: dict[str, tuple[str, str]] = {
    "auto": ("dispatch", "bi_selective_scan"),
    "reference": ("reference", "bi_selective_scan_reference"),
    "fast": ("reference", "bi_selective_scan_fast"),
    "cpu": ("cpu", "bi_selective_scan_cpu"),
    "cuda": ("cuda", "bi_selective_scan_cuda"),
}


def get_scan(scan: str | ScanFn) -> ScanFn:
    """The backend called `scan` (a function is returned as it is)."""
    if callable(scan):
        return scan
    try:
        module, attr = SCANS[scan]
    except KeyError:
        raise ValueError(f"unknown scan backend {scan!r}; known: {', '.join(SCANS)}") from None
    return getattr(importlib.import_module(f"{__name__}.{module}"), attr)
