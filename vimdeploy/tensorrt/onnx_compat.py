"""What TensorRT's ONNX parser (onnx-tensorrt) will refuse in an ONNX, found without TensorRT.

The checks, each from the parser's rules (onnx-tensorrt onnxOpImporters.cpp, docs/operators.md,
TensorRT's IQuantizeLayer/IDequantizeLayer documentation):
  * ops: in the support table (onnx_ops.py), not marked unsupported; a node of another
    op type is looked up as a plugin by its op_type (the parser ignores the domain);
  * Q/DQ: DequantizeLinear input INT8/FP8/INT4/FP4 (an INT32 bias behind a DequantizeLinear
    fails: onnx-tensorrt#850), zero points constant and 0 (symmetric INT8), scales constant,
    finite and > 0, per-channel scales only on weights (initializers);
  * Resize: modes nearest/linear/cubic, no antialias;
  * our BiSelectiveScan node against its contract (export/op_contract.md): 15 inputs, one
    output, `delta_softplus` (INT, 0 or 1) and `out_scale` (FLOAT, finite), `plugin_version`
    "1" and `plugin_namespace` "" if present (they select the creator: exact match),
    activations fp32 or fp16 alike, A/D/dt biases fp32, the output the activations' type, and
    the inputs' shapes (as far as the file or shape inference gives them) consistent with
    (b, L, E) / (b, L, N) / (E, N) / (E,) with N = 16.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..contract import (
    ACTIVATION_INDICES,
    D_STATE,
    DEFAULT_DELTA_SOFTPLUS,
    DEFAULT_OUT_SCALE,
    DIMS,
    INPUT_NAMES,
    NUM_INPUTS,
    OP_TYPE,
    PARAMETERS,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    check_attributes,
    check_shapes,
)
from .onnx_ops import OPSET_RANGE, SUPPORTED, TABLE_VERSION, UNSUPPORTED

__all__ = ["Finding", "check_onnx", "PLUGIN_CONTRACT"]


@dataclass(frozen=True)
class PluginContract:
    """BiSelectiveScan as TensorRT sees it (export/op_contract.md, the plugin's creator)."""

    inputs: int = NUM_INPUTS
    outputs: int = 1
    activations: tuple[int, ...] = ACTIVATION_INDICES  # z, x/dt/B/C of both directions: all fp32 or all fp16
    fp32_inputs: tuple[int, ...] = tuple(INPUT_NAMES.index(name) for name in PARAMETERS)  # A, D, dt biases
    # the creator's fields (getFieldNames) with the ONNX attribute types loadFields maps to them
    attributes: tuple[tuple[str, int], ...] = (
        ("delta_softplus", onnx.AttributeProto.INT),
        ("out_scale", onnx.AttributeProto.FLOAT),
    )
    # the attributes that select the creator, with the values it is registered under
    selectors: tuple[tuple[str, str], ...] = (
        ("plugin_version", PLUGIN_VERSION),
        ("plugin_namespace", PLUGIN_NAMESPACE),
    )


PLUGIN_CONTRACT = PluginContract()

# IDequantizeLayer inputs (TensorRT 10.x/11.x): INT8, FP8 E4M3, INT4, FP4 E2M1.
DQ_INPUT_TYPES = {TensorProto.INT8, TensorProto.FLOAT8E4M3FN, TensorProto.INT4, getattr(TensorProto, "FLOAT4E2M1", -1)}
RESIZE_MODES = {"nearest", "linear", "cubic"}


@dataclass(frozen=True)
class Finding:
    level: str  # "error": the parser or the build fails; "warning": it runs, but not as meant
    node: str
    message: str

    def __str__(self) -> str:
        return f"{self.level}: {self.node}: {self.message}" if self.node else f"{self.level}: {self.message}"


class _Graph:
    """Types and constant values of a graph's tensors."""

    def __init__(self, model: onnx.ModelProto):
        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception:  # noqa: BLE001 - custom ops without a schema: keep the types the file has
            pass
        g = model.graph
        self.types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
        # shapes as far as known: a dimension without a value (symbolic) is None
        self.shapes = {
            v.name: tuple(d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim)
            for v in [*g.value_info, *g.input, *g.output]
            if v.type.tensor_type.HasField("shape")
        }
        self.constants = {t.name: t for t in g.initializer}
        for n in g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.constants[n.output[0]] = n.attribute[0].t
        self.types.update({k: t.data_type for k, t in self.constants.items()})
        self.shapes.update({k: tuple(t.dims) for k, t in self.constants.items()})
        self.nodes = list(g.node)

    def value(self, name: str) -> np.ndarray | None:
        t = self.constants.get(name)
        return None if t is None else numpy_helper.to_array(t)


def _name(node: onnx.NodeProto) -> str:
    return node.name or f"{node.op_type}({', '.join(node.output)})"


def _type_name(t: int) -> str:
    return TensorProto.DataType.Name(t) if t else "unknown"


def _qdq(g: _Graph, node: onnx.NodeProto) -> Iterator[Finding]:
    name = _name(node)
    dequant = node.op_type == "DequantizeLinear"
    if dequant:
        x_type = g.types.get(node.input[0], 0)
        if x_type == TensorProto.INT32:
            yield Finding(
                "error",
                name,
                f"DequantizeLinear over INT32 ({node.input[0]}): TensorRT's IDequantizeLayer "
                "takes INT8/FP8/INT4/FP4 only; a quantized bias must stay float (quantize_static with "
                "QuantizeBias False)",
            )
        elif x_type and x_type not in DQ_INPUT_TYPES:
            yield Finding(
                "error", name, f"DequantizeLinear over {_type_name(x_type)}: TensorRT takes INT8/FP8/INT4/FP4"
            )
    scale_name = node.input[1] if len(node.input) > 1 else ""
    scale = g.value(scale_name)
    if scale is None:
        yield Finding("error", name, f"scale {scale_name!r} is not a constant: TensorRT needs build-time scales")
    else:
        if not np.all(np.isfinite(scale)) or not np.all(scale > 0):
            yield Finding(
                "error",
                name,
                f"scale {scale_name!r} has values that are not finite and > 0 (min {float(np.min(scale)):g})",
            )
        if scale.size > 1 and (not dequant or node.input[0] not in g.constants):
            yield Finding(
                "error",
                name,
                "per-channel scale on an activation: TensorRT quantizes activations per tensor, weights per channel",
            )
    if len(node.input) > 2 and node.input[2]:
        zp_name = node.input[2]
        zp = g.value(zp_name)
        zp_type = g.types.get(zp_name, 0)
        if zp is None:
            yield Finding("error", name, f"zero point {zp_name!r} is not a constant")
        elif np.any(zp != 0):
            yield Finding("error", name, f"zero point {zp_name!r} is not 0: TensorRT's INT8 is symmetric")
        if not dequant and zp_type == TensorProto.UINT8:
            yield Finding("error", name, "QuantizeLinear to UINT8: TensorRT quantizes to INT8 (symmetric)")


def _resize(node: onnx.NodeProto) -> Iterator[Finding]:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    mode = attrs.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    if mode not in RESIZE_MODES:
        yield Finding("error", _name(node), f"Resize mode {mode!r}: TensorRT takes {sorted(RESIZE_MODES)}")
    if attrs.get("antialias", 0):
        yield Finding("error", _name(node), "Resize with antialias: not supported by TensorRT")


def _scan_node(g: _Graph, node: onnx.NodeProto) -> Iterator[Finding]:
    name, c = _name(node), PLUGIN_CONTRACT
    if len(node.input) != c.inputs or len(node.output) != c.outputs:
        yield Finding(
            "error",
            name,
            f"{OP_TYPE} takes {c.inputs} inputs and gives {c.outputs} output; "
            f"this node has {len(node.input)} and {len(node.output)}",
        )
        return
    attrs = {a.name: a for a in node.attribute}
    for key, kind in c.attributes:
        if key not in attrs:
            yield Finding("error", name, f"attribute {key} missing (the op contract has no default for it)")
        elif attrs[key].type != kind:
            yield Finding(
                "error",
                name,
                f"attribute {key} is {onnx.AttributeProto.AttributeType.Name(attrs[key].type)}, "
                f"the plugin field expects {onnx.AttributeProto.AttributeType.Name(kind)}",
            )
    for key, expected in c.selectors:
        if key in attrs:
            a = attrs[key]
            value = a.s.decode() if a.type == onnx.AttributeProto.STRING else None
            if value != expected:
                yield Finding(
                    "error",
                    name,
                    f"{key} {value!r}: TensorRT looks the creator up by exact match and the "
                    f'plugin is registered as {expected!r} ("Plugin not found" otherwise)',
                )
    for key in sorted(set(attrs) - {k for k, _ in c.attributes} - {k for k, _ in c.selectors}):
        yield Finding("warning", name, f"attribute {key} is not a plugin field: TensorRT ignores it")
    types = [g.types.get(i, 0) for i in node.input]
    act = {types[i] for i in c.activations if types[i]}
    if len(act) > 1 or act - {TensorProto.FLOAT, TensorProto.FLOAT16}:
        yield Finding(
            "error",
            name,
            "activations (inputs 0-8) must all be FLOAT or all FLOAT16; they are "
            + ", ".join(sorted(_type_name(t) for t in act)),
        )
    for i in c.fp32_inputs:
        if types[i] and types[i] != TensorProto.FLOAT:
            yield Finding(
                "error",
                name,
                f"input {i} ({node.input[i]}) is {_type_name(types[i])}; A, D and the dt "
                "biases are FLOAT by the op contract",
            )
    out = g.types.get(node.output[0], 0)
    if len(act) == 1 and out and out not in act:
        yield Finding("error", name, f"output is {_type_name(out)}, the activations {_type_name(next(iter(act)))}")
    values = {k: onnx.helper.get_attribute_value(a) for k, a in attrs.items()}
    reason = check_attributes(
        values.get("delta_softplus", DEFAULT_DELTA_SOFTPLUS), values.get("out_scale", DEFAULT_OUT_SCALE)
    )
    if reason:
        yield Finding("error", name, reason)
    yield from _scan_shapes(g, node)


def _scan_shapes(g: _Graph, node: onnx.NodeProto) -> Iterator[Finding]:
    """The inputs' shapes against the contract's (b, L, E, N), where the graph gives them: an
    input of unknown shape agrees with anything (TensorRT checks it when the engine is built)."""
    shapes = [g.shapes.get(i, (None,) * len(dims)) for i, dims in zip(node.input, DIMS)]
    sizes, reason = check_shapes(shapes)
    if reason:
        yield Finding("error", _name(node), f"input shapes break the op contract: {reason}")
    elif sizes.get("N") not in (None, D_STATE):
        yield Finding("error", _name(node), f"d_state N = {sizes['N']}: the plugin implements N = {D_STATE}")


def check_onnx(model: onnx.ModelProto) -> list[Finding]:
    """Every finding for TensorRT in `model`; no error means onnx-tensorrt should take it."""
    findings: list[Finding] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        findings.append(
            Finding(
                "warning",
                "",
                f"opset {opset} is outside {OPSET_RANGE[0]}-{OPSET_RANGE[1]}, the "
                f"range of the support table ({TABLE_VERSION})",
            )
        )
    g = _Graph(model)
    for node in g.nodes:
        if node.op_type == OP_TYPE:
            findings += _scan_node(g, node)
        elif node.domain not in ("", "ai.onnx"):
            findings.append(
                Finding(
                    "error",
                    _name(node),
                    f"{node.domain}::{node.op_type} is not an ONNX op: "
                    f"TensorRT would need a plugin registered as {node.op_type!r}",
                )
            )
        elif node.op_type in UNSUPPORTED or node.op_type not in SUPPORTED:
            findings.append(
                Finding(
                    "error", _name(node), f"{node.op_type} is not supported by TensorRT's ONNX parser ({TABLE_VERSION})"
                )
            )
        elif node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            findings += _qdq(g, node)
        elif node.op_type == "Resize":
            findings += _resize(node)
    return findings
