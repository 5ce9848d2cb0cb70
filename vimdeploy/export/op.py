"""The `BiSelectiveScan` op (export/op_contract.md) on the PyTorch and ONNX sides.

* `torch.ops.vimdeploy.bi_selective_scan`: a `torch.library.custom_op` so that
  `torch.export` keeps one opaque call per layer (its CPU kernel is the fast PyTorch scan;
  `register_fake` gives the exporter its output shape). Registered as the scan backend "op".
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

from ..model.scan import bi_selective_scan_fast, register_scan_backend

DOMAIN = "trt.plugins"
OP_TYPE = "BiSelectiveScan"
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = ""
SCHEMA_VERSION = 1  # the opset version of our custom domain

INPUT_NAMES = (
    "z", "x_fwd", "dt_fwd", "B_fwd", "C_fwd", "x_bwd", "dt_bwd", "B_bwd", "C_bwd",
    "A_fwd", "A_bwd", "D_fwd", "D_bwd", "dt_bias_fwd", "dt_bias_bwd",
)
# The op's defaults. torch.export drops keyword arguments equal to their defaults, so the
# translation below must fall back to exactly these.
DEFAULT_DELTA_SOFTPLUS = True
ATTRIBUTES = ("delta_softplus", "out_scale", "plugin_version", "plugin_namespace")
DEFAULT_OUT_SCALE = 0.5


@torch.library.custom_op("vimdeploy::bi_selective_scan", mutates_args=())
def bi_selective_scan(
    z: torch.Tensor, x_fwd: torch.Tensor, dt_fwd: torch.Tensor, B_fwd: torch.Tensor, C_fwd: torch.Tensor,
    x_bwd: torch.Tensor, dt_bwd: torch.Tensor, B_bwd: torch.Tensor, C_bwd: torch.Tensor,
    A_fwd: torch.Tensor, A_bwd: torch.Tensor, D_fwd: torch.Tensor, D_bwd: torch.Tensor,
    dt_bias_fwd: torch.Tensor, dt_bias_bwd: torch.Tensor,
    delta_softplus: bool = DEFAULT_DELTA_SOFTPLUS, out_scale: float = DEFAULT_OUT_SCALE,
) -> torch.Tensor:
    return bi_selective_scan_fast(
        z, x_fwd, dt_fwd, B_fwd, C_fwd, x_bwd, dt_bwd, B_bwd, C_bwd,
        A_fwd, A_bwd, D_fwd, D_bwd, dt_bias_fwd, dt_bias_bwd,
        delta_softplus=delta_softplus, out_scale=out_scale,
    )


@bi_selective_scan.register_fake
def _(z, x_fwd, *rest, delta_softplus=DEFAULT_DELTA_SOFTPLUS, out_scale=DEFAULT_OUT_SCALE):
    return torch.empty_like(x_fwd)  # y: (b, L, E) in the activations' dtype


def bi_selective_scan_op(*inputs, delta_softplus: bool = True, out_scale: float = 0.5):
    """Scan backend "op": same signature as `bi_selective_scan_reference`."""
    return torch.ops.vimdeploy.bi_selective_scan(*inputs, delta_softplus=bool(delta_softplus),
                                                 out_scale=float(out_scale))


register_scan_backend("op", bi_selective_scan_op)


def _make_schema() -> OpSchema:
    T = "T"
    f = OpSchema.FormalParameter
    activations = [f(n, T) for n in INPUT_NAMES[:9]]
    params = [f(n, "tensor(float)") for n in INPUT_NAMES[9:]]
    return OpSchema(
        OP_TYPE, DOMAIN, SCHEMA_VERSION,
        doc="Bidirectional selective scan of one Vim layer (vimdeploy export/op_contract.md).",
        inputs=activations + params,
        outputs=[f("y", T)],
        type_constraints=[(T, ["tensor(float)", "tensor(float16)"], "activations")],
        attributes=[
            OpSchema.Attribute("delta_softplus", OpSchema.AttrType.INT, "softplus(dt + dt_bias) if 1"),
            OpSchema.Attribute("out_scale", OpSchema.AttrType.FLOAT, "0.5 for the div2 models"),
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

    def translate(z, x_fwd, dt_fwd, B_fwd, C_fwd, x_bwd, dt_bwd, B_bwd, C_bwd,
                  A_fwd, A_bwd, D_fwd, D_bwd, dt_bias_fwd, dt_bias_bwd,
                  delta_softplus: bool = DEFAULT_DELTA_SOFTPLUS, out_scale: float = DEFAULT_OUT_SCALE):
        return trt.BiSelectiveScan(
            z, x_fwd, dt_fwd, B_fwd, C_fwd, x_bwd, dt_bwd, B_bwd, C_bwd,
            A_fwd, A_bwd, D_fwd, D_bwd, dt_bias_fwd, dt_bias_bwd,
            delta_softplus=int(bool(delta_softplus)), out_scale=float(out_scale),
            plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE,
        )

    return translate


def custom_translation_table() -> dict:
    return {torch.ops.vimdeploy.bi_selective_scan.default: _onnxscript_translation()}
