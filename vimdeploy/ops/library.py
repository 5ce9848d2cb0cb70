"""Scan ops in PyTorch's operator registry, one schema for all of them.

Each op takes the contract's 15 tensors (`ScanInputs`) and its two attributes, and is
opaque to torch.compile and torch.export: one node per layer, whose output shape comes
from the fake (meta) implementation. The schema is written once, from `INPUT_NAMES`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..contract import DEFAULT_DELTA_SOFTPLUS, DEFAULT_OUT_SCALE, NUM_INPUTS
from .check import check_scan_attributes, check_scan_inputs
from .inputs import ScanInputs, op_schema

NAMESPACE = "vimdeploy"
_LIB = torch.library.Library(NAMESPACE, "FRAGMENT")

Kernel = Callable[..., torch.Tensor]  # (inputs: ScanInputs, *, delta_softplus, out_scale) -> y


def _unpack(args, kwargs):
    """The dispatcher passes the attributes positionally or by keyword: accept both. The
    inputs and attributes are checked against the contract here, before any kernel runs."""
    inputs = ScanInputs(*args[:NUM_INPUTS])
    rest = dict(zip(("delta_softplus", "out_scale"), args[NUM_INPUTS:]), **kwargs)
    softplus, scale = rest.get("delta_softplus", DEFAULT_DELTA_SOFTPLUS), rest.get("out_scale", DEFAULT_OUT_SCALE)
    check_scan_inputs(inputs, softplus, scale)
    return inputs, bool(softplus), float(scale)


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


def call(
    op, inputs: ScanInputs, delta_softplus: bool = DEFAULT_DELTA_SOFTPLUS, out_scale: float = DEFAULT_OUT_SCALE
) -> torch.Tensor:
    """Call a scan op with a ScanInputs. The attributes are checked here, as given (the op's
    schema would make a bool of delta_softplus 2); the tensors inside the op (`_unpack`), where
    they are real tensors: torch.export and torch.compile trace this function symbolically."""
    check_scan_attributes(delta_softplus, out_scale)
    return op(*inputs, delta_softplus=bool(delta_softplus), out_scale=float(out_scale))
