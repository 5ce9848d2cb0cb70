"""The `BiSelectiveScan` op (export/op_contract.md) on the ONNX side.

* The PyTorch side is `torch.ops.vimdeploy.bi_selective_scan` (vimdeploy/ops/dispatch.py,
  scan backend "auto"): `torch.export` keeps one opaque call per layer.
* `SCHEMA`: the ONNX `OpSchema` of `trt.plugins::BiSelectiveScan` (export/schema.py,
  registered on import: onnxscript needs it to build the node).
* `translate`: the onnxscript function the dynamo exporter calls for each op call
  (`custom_translation_table`): it writes the node with all four contract attributes.
"""

from __future__ import annotations

import torch

from ..contract import (
    DEFAULT_DELTA_SOFTPLUS,
    DEFAULT_OUT_SCALE,
    DOMAIN,
    NUM_INPUTS,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    SCHEMA_VERSION,
)
from ..ops.dispatch import bi_selective_scan as scan_op
from .schema import SCHEMA

__all__ = ["SCHEMA", "scan_op", "custom_translation_table"]


def _onnxscript_translation():
    from onnxscript.values import Opset

    trt = Opset(DOMAIN, SCHEMA_VERSION)

    def translate(*inputs, delta_softplus: bool = DEFAULT_DELTA_SOFTPLUS, out_scale: float = DEFAULT_OUT_SCALE):
        assert len(inputs) == NUM_INPUTS
        return trt.BiSelectiveScan(
            *inputs,
            delta_softplus=int(bool(delta_softplus)),
            out_scale=float(out_scale),
            plugin_version=PLUGIN_VERSION,
            plugin_namespace=PLUGIN_NAMESPACE,
        )

    return translate


def custom_translation_table() -> dict:
    return {torch.ops.vimdeploy.bi_selective_scan.default: _onnxscript_translation()}
