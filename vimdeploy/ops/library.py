"""Scan ops in PyTorch's operator registry, one schema for all of them.

Each op takes the contract's 15 tensors (`ScanInputs`) and its two attributes, and is
opaque to torch.compile and torch.export: one node per layer, whose output shape comes
from the fake (meta) implementation. The schema is written once, from `INPUT_NAMES`.
"""

from __future__ import annotations

from typing import Callable

import torch

from .inputs import ScanInputs, op_schema

NAMESPACE = "vimdeploy"
_LIB = torch.library.Library(NAMESPACE, "FRAGMENT")

Kernel = Callable[..., torch.Tensor]  # (inputs: ScanInputs, *, delta_softplus, out_scale) -> y


def _unpack(args, kwargs):
    """The dispatcher passes the attributes positionally or by keyword: accept both."""
    inputs = ScanInputs(*args[:15])
    rest = dict(zip(("delta_softplus", "out_scale"), args[15:]), **kwargs)
    return inputs, bool(rest.get("delta_softplus", True)), float(rest.get("out_scale", 0.5))


def define_scan_op(name: str, kernels: dict[str, Kernel]):
    """Define `torch.ops.vimdeploy.<name>` with an implementation per dispatch key
    ("CPU", "CUDA"); returns the op's overload packet."""
    _LIB.define(name + op_schema())
    for key, kernel in kernels.items():
        def impl(*args, _kernel=kernel, **kwargs):
            inputs, softplus, scale = _unpack(args, kwargs)
            return _kernel(inputs, delta_softplus=softplus, out_scale=scale)

        _LIB.impl(name, impl, key)

    def fake(*args, **kwargs):
        return torch.empty_like(args[1], memory_format=torch.contiguous_format)  # y: like x_fwd

    torch.library.register_fake(f"{NAMESPACE}::{name}", fake, lib=_LIB)
    return getattr(getattr(torch.ops, NAMESPACE), name)


def call(op, inputs: ScanInputs, delta_softplus: bool = True, out_scale: float = 0.5) -> torch.Tensor:
    """Call a scan op with a ScanInputs."""
    return op(*inputs, delta_softplus=bool(delta_softplus), out_scale=float(out_scale))
