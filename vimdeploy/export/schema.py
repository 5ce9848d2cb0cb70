"""The ONNX `OpSchema` of `trt.plugins::BiSelectiveScan` (export/op_contract.md), registered
with `onnx.defs.register_schema` on import: onnxscript needs it to build the node, and it
gives ONNX's checker and shape inference the output's shape and type. onnx only, no PyTorch:
the ONNX-side tools (precision conversion, the runtime) import it without the exporter."""

from __future__ import annotations

import onnx
from onnx.defs import OpSchema

from ..contract import ACTIVATIONS, DEFAULT_OUT_SCALE, DOMAIN, OP_TYPE, OUTPUT_NAME, PARAMETERS, SCHEMA_VERSION

__all__ = ["SCHEMA"]


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
