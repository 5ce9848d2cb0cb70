"""The `BiSelectiveScan` op (export/op_contract.md) on the ONNX side.

* The PyTorch side is `torch.ops.vimdeploy.bi_selective_scan` (vimdeploy/ops/dispatch.py,
  scan backend "auto"): `torch.export` keeps one opaque call per layer.
* `SCHEMA`: the ONNX `OpSchema` of `trt.plugins::BiSelectiveScan`, registered with
  `onnx.defs.register_schema` (onnxscript needs it to build the node, and it gives ONNX
  shape inference the output shape).
* `translate`: the onnxscript function the dynamo exporter calls for each op call
  (`custom_translation_table`): it writes the node with all four contract attributes.
"""

from __future__ import annotations

import onnx
import torch
from onnx.defs import OpSchema

from ..contract import (
    ACTIVATIONS,
    DEFAULT_DELTA_SOFTPLUS,
    DEFAULT_OUT_SCALE,
    DOMAIN,
    NUM_INPUTS,
    OP_TYPE,
    OUTPUT_NAME,
    PARAMETERS,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    SCHEMA_VERSION,
)
from ..ops.dispatch import bi_selective_scan as scan_op

__all__ = ["SCHEMA", "scan_op", "custom_translation_table"]


def _make_schema() -> OpSchema:
    T = "T"
    f = OpSchema.FormalParameter
    activations = [f(n, T) for n in ACTIVATIONS]
    params = [f(n, "tensor(float)") for n in PARAMETERS]
    return OpSchema(
        OP_TYPE,
        DOMAIN,
        SCHEMA_VERSION,
        doc="Bidirectional selective scan of one Vim layer (vimdeploy export/op_contract.md).",
        inputs=activations + params,
        outputs=[f(OUTPUT_NAME, T)],
        type_constraints=[(T, ["tensor(float)", "tensor(float16)"], "activations")],
        attributes=[
            OpSchema.Attribute("delta_softplus", OpSchema.AttrType.INT, "softplus(dt + dt_bias) if 1"),
            OpSchema.Attribute("out_scale", OpSchema.AttrType.FLOAT, f"{DEFAULT_OUT_SCALE} for the div2 models"),
            OpSchema.Attribute("plugin_version", OpSchema.AttrType.STRING, "TensorRT plugin version"),
            OpSchema.Attribute("plugin_namespace", OpSchema.AttrType.STRING, "TensorRT plugin namespace"),
        ],
    )


def _infer_y(ctx) -> None:
    """ONNX shape inference: y has x_fwd's (b, L, E) shape and type (index 1)."""
    if ctx.has_input(1) and ctx.get_input_type(1) is not None:
        ctx.set_output_type(0, ctx.get_input_type(1))


SCHEMA = _make_schema()
SCHEMA.set_type_and_shape_inference_function(_infer_y)
if not onnx.defs.has(OP_TYPE, DOMAIN):
    onnx.defs.register_schema(SCHEMA)


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
